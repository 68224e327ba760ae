"""Markdown technician-ops did not write: Hugo/MkDocs pages, Runme notebooks (tests/fixtures/foreign)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from technician_ops.errors import RunbookError
from technician_ops.plan.loader import is_runbook, lint, load_runbook, runbook_files

FOREIGN = Path(__file__).parent.parent / "fixtures" / "foreign"
RUNME = FOREIGN / "runme"


def _errors(diags):  # type: ignore[no-untyped-def]
    return [str(d) for d in diags if d.severity == "error"]


def test_pages_without_our_front_matter_are_not_runbooks() -> None:
    assert not is_runbook(FOREIGN / "docs" / "hugo-page.md")  # only Hugo's keys
    assert is_runbook(FOREIGN / "docs" / "mkdocs-runbook.md")  # MkDocs keys beside ours
    assert not is_runbook(RUNME / "README.md")  # Runme's own front matter only
    ours, others = runbook_files(FOREIGN / "docs")
    assert [p.name for p in ours] == ["mkdocs-runbook.md"] and [p.name for p in others] == ["hugo-page.md"]


def test_foreign_front_matter_keys_warn_and_strict_refuses() -> None:
    page = FOREIGN / "docs" / "mkdocs-runbook.md"
    diags = lint(page, FOREIGN)
    assert not _errors(diags)
    warned = {d.line: d.message for d in diags if d.severity == "warning"}
    assert warned[2].startswith("unknown front matter key 'title' is ignored")
    assert "did you mean" not in warned[2]  # a known foreign key, not a typo
    assert load_runbook(page, FOREIGN).steps[0].name == "rotate"
    with pytest.raises(RunbookError) as exc:
        load_runbook(page, FOREIGN, strict=True)
    assert "mkdocs-runbook.md:2: unknown front matter key 'title'" in str(exc.value)


def test_a_typo_of_our_key_says_so(tmp_path: Path) -> None:
    path = tmp_path / "typo.md"
    path.write_text("---\nhosts: web\ntimout: 5m\n---\n```sh {name=a undo=none}\ntrue\n```\n")
    warned = [d.message for d in lint(path, tmp_path) if d.severity == "warning"]
    assert "unknown front matter key 'timout' is ignored: did you mean 'timeout'?" in warned


def test_runme_notebook_reads_as_cells_of_shell(tmp_path: Path) -> None:
    # A real Runme README (unmodified): sh cells become shell steps; other languages, Runme-only
    # attributes and Runme's front matter are warnings, never errors.
    runbook = load_runbook(RUNME / "README.md", FOREIGN, hosts="localhost")
    names = [s.name for s in runbook.steps]
    assert names[:2] == ["step-1", "echo"] and {"print-name", "a", "b", "c", "generate"} <= set(names)
    assert all(s.kind == "shell" for s in runbook.steps)
    echo = runbook.step("echo")
    assert echo.body.strip() == 'echo "Hello, runme!"'  # Runme's "$ " prompt is not part of the command
    warnings = [d.message for d in runbook.warnings]
    assert any(m.startswith("Runme cell in 'js' is not a step") for m in warnings)
    assert any(m.startswith("Runme attribute(s) ignored: tag") for m in warnings)
    # Without hosts it is not runnable, and says how to make it so.
    errors = _errors(lint(RUNME / "README.md", FOREIGN))
    assert errors and "has no hosts" in errors[0]


def test_runme_cells_out_of_run_all_are_documentation(tmp_path: Path) -> None:
    path = tmp_path / "nb.md"
    path.write_text('```sh {"id":"01A","name":"serve","background":"true"}\npython -m http.server\n```\n'
                    '```sh {"id":"01B","name":"manual","excludeFromRunAll":"true"}\nrm -rf /tmp/x\n```\n'
                    '```bash {"id":"01C","name":"hello","interactive":"true","promptEnv":"no"}\necho hi\n```\n')
    runbook = load_runbook(path, tmp_path, hosts="web")
    assert [s.name for s in runbook.steps] == ["hello"] and runbook.hosts == "web"
    assert any("promptEnv, interactive" in d.message or "interactive, promptEnv" in d.message for d in runbook.warnings)


def test_lint_dir_skips_pages_with_a_notice_and_errors_when_named(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "runbooks").mkdir(parents=True)
    for name in ("hugo-page.md", "mkdocs-runbook.md"):
        shutil.copy(FOREIGN / "docs" / name, project / "runbooks" / name)
    shutil.copy(RUNME / "README.md", project / "runbooks" / "README.md")
    cmd = [sys.executable, "-m", "technician_ops.cli", "--project", str(project), "lint"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hugo-page.md: skipped: no technician-ops front matter" in proc.stderr
    assert "README.md: skipped" in proc.stderr and "1 runbook(s): 0 error(s)" in proc.stderr
    proc = subprocess.run([*cmd, str(project / "runbooks" / "hugo-page.md")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 65 and "hugo-page.md" in proc.stdout
    listed = subprocess.run([*cmd[:-1], "list"], capture_output=True, text=True, timeout=60)
    assert "rotate" not in listed.stdout and "mkdocs-runbook" in listed.stdout and "hugo" not in listed.stdout
