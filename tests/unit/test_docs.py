"""Docs that cannot drift: the README's exit-code table and command list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from technician_ops.errors import ExitCode

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_exit_code_table_matches_the_enum() -> None:
    table = README.split("<!-- exit-codes")[1].split("<!-- /exit-codes -->")[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", table, re.M))
    assert {int(k): v for k, v in rows.items()} == {int(c): c.meaning for c in ExitCode}


def test_every_command_is_documented() -> None:
    from technician_ops.cli import cli

    for name, command in cli.commands.items():
        assert f"technician-ops {name}" in README, name
        for sub in getattr(command, "commands", {}):
            assert f"technician-ops {name} {sub}" in README, f"{name} {sub}"


def test_help_imports_nothing_heavy() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "technician_ops.cli", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Usage:" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    for heavy in ("ansible", "ansible_runner", "hvac", "python_terraform", "paramiko", "psycopg",
                  "yaml", "markdown_it", "jinja2", "technician_ops.events"):
        assert heavy not in imported, heavy


def test_lint_imports_nothing_heavy() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "technician_ops.cli", "--project", str(root), "lint",
                           str(root / "runbooks" / "deploy-config.md")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    # markdown_it too: a plain runbook's fences are found by a line scan (technician_ops/fences.py)
    for heavy in ("ansible", "ansible_runner", "hvac", "python_terraform", "paramiko", "markdown_it"):
        assert heavy not in imported, heavy
