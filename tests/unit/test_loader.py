"""Table-driven: each bad runbook in tests/fixtures/bad has its expected diagnostic beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from technician_ops.errors import RunbookError
from technician_ops.plan.loader import lint, load_runbook

BAD = Path(__file__).parent.parent / "fixtures" / "bad"
CASES = sorted(BAD.glob("*.md"))


def expected(case: Path) -> tuple[int, str]:
    head, message = case.with_suffix(".expected").read_text().strip().split(":", 1)
    return int(head.split()[1]), message.strip()


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_runbook_reports_file_line_and_message(case: Path) -> None:
    line, message = expected(case)
    strict = case.stem.endswith("-strict")
    errors = [d for d in lint(case, BAD, strict=strict) if d.severity == "error"]
    rendered = [str(d) for d in errors]
    assert any(d.line == line and d.message.startswith(message) for d in errors), rendered
    # the rendering is path:line: message, with the path the user gave
    assert any(r.startswith(f"{errors[0].path}:{line}: ") for r in rendered)
    with pytest.raises(RunbookError) as exc:
        load_runbook(case, BAD, strict=strict)
    assert f":{line}: {message}" in str(exc.value)


def test_missing_undo_is_a_warning_without_strict() -> None:
    case = BAD / "no-undo-strict.md"
    diags = lint(case, BAD)
    assert [d.severity for d in diags] == ["warning"]
    assert str(diags[0]).endswith("5: warning: step 'restart' changes things but has no undo: add a ```yaml "
                                  "{rollback=restart} block, or declare undo=none (nothing to undo) or "
                                  "undo=backup:STEP (an earlier backup step restores what it changes)")
    assert load_runbook(case, BAD).warnings


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    rb = tmp_path / "many.md"
    rb.write_text("---\nhosts: web\ncolour: x\n---\n\n```yaml {name=a kind=nope}\n- ping:\n```\n\n```yaml {rollback=zzz}\n- ping:\n```\n")
    lines = sorted(d.line for d in lint(rb, tmp_path))
    assert lines == [3, 6, 10]


def test_plain_code_blocks_are_documentation(tmp_path: Path) -> None:
    rb = tmp_path / "doc.md"
    rb.write_text("---\nhosts: web\n---\n\n```yaml\n- this: is not a step\n```\n\n```sh\nrm -rf /\n```\n\n"
                  "```yaml {name=only kind=check}\n- ansible.builtin.ping:\n```\n")
    runbook = load_runbook(rb, tmp_path)
    assert [s.name for s in runbook.steps] == ["only"]
    assert runbook.steps[0].line == 13 and runbook.steps[0].body_line == 14


def test_json_attribute_block_and_defaults(tmp_path: Path) -> None:
    rb = tmp_path / "json.md"
    rb.write_text('---\nhosts: db\nparams:\n  n: {type: int, default: 3}\n---\n\n'
                  '```yaml {"name": "promote", "hosts": "db1", "serial": 1}\n- ansible.builtin.ping:\n```\n\n'
                  '```yaml {rollback=promote}\n- ansible.builtin.ping:\n```\n')
    runbook = load_runbook(rb, tmp_path)
    step = runbook.step("promote")
    assert step.attrs == {"name": "promote", "hosts": "db1", "serial": "1"}
    assert runbook.undos["promote"].undo_of == "promote"
    assert runbook.params["n"].default == 3 and runbook.lock == "json"


def test_bundled_runbooks_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "runbooks").glob("*.md")):
        assert [d for d in lint(path, root) if d.severity == "error"] == [], path


def test_terraform_step_without_any_undo_is_warned(tmp_path: Path) -> None:
    (tmp_path / "terraform" / "app").mkdir(parents=True)
    (tmp_path / "terraform" / "app" / "main.tf").write_text("")
    rb = tmp_path / "tf.md"
    body = "```yaml {name=apply kind=terraform}\nmodule: terraform/app\nvars: {version: \"1\"}\n%s```\n"
    rb.write_text("---\nname: tf\n---\n\n" + body % "")
    diags = lint(rb, tmp_path)
    assert [(d.line, d.severity) for d in diags] == [(5, "warning")], [str(d) for d in diags]
    assert "changes things but has no undo" in diags[0].message
    rb.write_text("---\nname: tf\n---\n\n" + body % "rollback: previous\n")
    assert lint(rb, tmp_path) == []
