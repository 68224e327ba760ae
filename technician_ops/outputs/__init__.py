"""Sinks of a run's event bus and renderers: terminal, JSON, JUnit, metrics, notify, records, run reports, schedule exports."""
