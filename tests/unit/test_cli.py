"""CLI edge: exact exit codes and one-line messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from technician_ops.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", *args], capture_output=True, text=True,
                          cwd=cwd, stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.parametrize("args,code,message", [
    (("run",), ExitCode.USAGE, "Missing argument 'NAME'"),
    (("frobnicate",), ExitCode.USAGE, "No such command"),
    (("run", "no-such-runbook"), ExitCode.USAGE, "error: no runbook named 'no-such-runbook'"),
    (("run", "release-with-healthcheck"), ExitCode.DATAERR, "missing required parameter 'release'"),
    (("run", "deploy-config", "-p", "max_connections=lots"), ExitCode.DATAERR,
     "parameter 'max_connections' must be an integer, got 'lots'"),
    (("run", "deploy-config", "-p", "novalue"), ExitCode.DATAERR, "must be written KEY=VALUE"),
    (("run", "restart-with-approval", "-p", "reason=x", "--check", "--approve", "nope"), ExitCode.DATAERR,
     "--approve names no step: nope"),
])
def test_errors_render_once_with_their_exit_code(args: tuple[str, ...], code: int, message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lint_reports_path_line_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text("---\nhosts: web\n---\n\n```yaml {name=a kind=warp}\n- ping:\n```\n")
    proc = cli("lint", str(bad), cwd=tmp_path)
    assert proc.returncode == ExitCode.DATAERR
    assert proc.stdout.strip() == "bad.md:5: unknown step kind 'warp' (known: " + proc.stdout.split("(known: ")[1].strip()


def test_list_and_show(tmp_path: Path) -> None:
    out = cli("list").stdout
    assert "deploy-config" in out and "release-with-healthcheck" in out
    show = cli("show", "release-with-healthcheck").stdout
    assert "release              string, required" in show
    assert "ship" in show and "undo at line" in show and "health-check" in show and "read-only" in show


def test_compile_writes_what_would_run(tmp_path: Path) -> None:
    proc = cli("compile", "release-with-healthcheck", "-o", str(tmp_path / "out"), "-p", "release=r7")
    assert proc.returncode == 0, proc.stderr
    playbook = (tmp_path / "out" / "project" / "main.yml").read_text()
    assert "name: save-previous" in playbook and "name: health-check" in playbook
    assert "release: r7" in (tmp_path / "out" / "project" / "params.yml").read_text()
    assert "undo:ship" in (tmp_path / "out" / "project" / "rollback.yml").read_text()
    assert (tmp_path / "out" / "ansible.cfg").exists()
