"""From a runbook file to a frozen Plan: load (parse + validate against the kinds), compile, write the files Ansible reads."""
