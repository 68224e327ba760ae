"""The runbook format: model, fences, attribute blocks, parameters, YAML, cron grammar.  Imports nothing of the engine."""
