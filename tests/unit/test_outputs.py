"""Step output: the bounded buffer, the references between steps, their lint, compile and the views."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from technician_ops.ansible_plugins.filter.step_output import step_output
from technician_ops.events import Event, Kind
from technician_ops.outputs.console import TextView
from technician_ops.outputs.render import output_text, record_text
from technician_ops.plan.compiler import build_plan
from technician_ops.plan.loader import lint, load_runbook
from technician_ops.runbook.refs import env_name, env_refs, jinja_refs
from technician_ops.state import OUTPUT_CAP, Output, clean_text


def test_output_keeps_head_and_tail_and_hashes_the_whole() -> None:
    out = Output()
    big = "".join(f"line {i}\n" for i in range(200_000))
    out.add("stdout", big)
    out.add("stderr", "boom")
    rec = out.to_record()
    assert rec["truncated"] and rec["bytes"] == len(big) + 4
    assert rec["sha256"] == hashlib.sha256((big + "boom").encode()).hexdigest()
    assert rec["stdout"].startswith("line 0\n") and rec["stdout"].rstrip().endswith("line 199999")
    assert "characters cut ...]" in rec["stdout"] and len(rec["stdout"]) < OUTPUT_CAP + 100
    assert rec["stderr"] == "boom"


def test_small_output_is_kept_whole_and_later_tasks_start_a_new_line() -> None:
    out = Output()
    out.add("stdout", "a")
    out.add("stdout", "b")
    out.rc = 0
    rec = out.to_record()
    assert rec["stdout"] == "a\nb" and not rec["truncated"] and rec["rc"] == 0
    assert not Output() and Output().to_record()["sha256"] is None


def test_undecodable_bytes_and_nul_are_stored_safely() -> None:
    text = clean_text("ok \udcff\udc80 and \x00 end")
    assert "\x00" not in text and text.encode("utf-8")  # encodes: no lone surrogates
    import json

    json.loads(json.dumps(text))


def test_references_are_found_in_every_form() -> None:
    assert jinja_refs("{{ steps.disk.json.used_pct }} {{ steps['disk-check'].stdout }} {{ steps [\"a.b\"] }}") == \
        ["disk", "disk-check", "a.b"]
    assert jinja_refs("mysteps.x and steps_count") == []
    assert env_name("disk-check", "stdout") == "STEP_DISK_CHECK_STDOUT"
    assert env_refs('echo "$STEP_DISK_CHECK_STDOUT ${STEP_DISK_RC}"', ["disk", "disk-check", "other"]) == \
        ["disk", "disk-check"]


def test_step_output_filter_parses_json_and_marks_skips() -> None:
    got = step_output({"stdout": '{"used_pct": 93}\n', "stderr": "", "rc": 0, "changed": False})
    assert got["json"] == {"used_pct": 93} and got["stdout_lines"] == ['{"used_pct": 93}'] and got["rc"] == 0
    assert step_output({"stdout": "{not json", "rc": 1})["json"] is None
    assert step_output({"skipped": True, "false_condition": "x"})["skipped"] is True
    assert step_output(None)["skipped"] is True
    loop = step_output({"results": [{"stdout": "1"}, {"stdout": "2", "rc": 3}], "changed": True})
    assert loop["stdout"] == "2" and loop["rc"] == 3 and loop["changed"] is True


RUNBOOK = """---
hosts: web
---
```sh {name=disk kind=check}
df -P /
```

```sh {name=clean undo=none when="{{ steps.disk.json.used_pct | int > 90 }}"}
echo "$STEP_DISK_STDOUT"
```

```yaml {name=unread kind=check}
- ansible.builtin.ping:
```

```yaml {name=report kind=check}
- ansible.builtin.debug: {msg: "{{ steps.clean.skipped }}"}
```
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.md"
    path.write_text(text)
    return path


def test_only_read_steps_publish_and_a_when_is_bare(tmp_path: Path) -> None:
    runbook = load_runbook(_write(tmp_path, RUNBOOK), tmp_path)
    plan = build_plan(runbook, tmp_path, {})
    assert plan.published == {"disk", "clean"}
    plays = {p["name"]: p for p in plan.playbook()}
    publish = plays["disk"]["tasks"][-1]
    assert publish["name"] == "technician-ops: publish disk" and publish["no_log"] is True
    assert plays["disk"]["tasks"][0]["block"][-1]["register"] == "technician_ops_result"
    assert len(plays["unread"]["tasks"]) == 1 and len(plays["report"]["tasks"]) == 1
    assert plays["clean"]["tasks"][0]["when"] == "steps.disk.json.used_pct | int > 90"
    env = plays["clean"]["tasks"][0]["block"][0]["environment"]
    assert env["STEP_DISK_STDOUT"] == "{{ (steps[\"disk\"] | default({}))[\"stdout\"] | default('') }}"
    assert "STEP_DISK_STDOUT" not in str(plays["clean"]["tasks"][0]["block"][0]["ansible.builtin.shell"]["cmd"]).replace(
        "$STEP_DISK_STDOUT", "")  # the script's text is untouched: the value arrives in the environment


@pytest.mark.parametrize("body, line, message", [
    ('```yaml {name=a kind=check}\n- ansible.builtin.debug: {msg: "{{ steps.dsk.stdout }}"}\n```\n', 8,
     "steps.dsk: no step 'dsk' runs before 'a': did you mean 'disk'?"),
    ('```yaml {name=a kind=check when="steps.later.rc == 0"}\n- ansible.builtin.ping:\n```\n'
     '```yaml {name=later kind=check}\n- ansible.builtin.ping:\n```\n', 7,
     "step 'a' reads steps.later, which runs after it"),
    ('```sh {name=a kind=check hosts="{{ steps.disk.stdout }}"}\ntrue\n```\n', 7, "step 'a': hosts= cannot read a step's output"),
    ('```sh {name=a kind=check}\necho $STEP_NOPE_STDOUT\n```\n', 8, "${STEP_NOPE_...}: no earlier step is called that"),
    ('```sh {name=a}\ntrue\n```\n```sh {rollback=a}\necho $STEP_DISK_RC\n```\n', 10,
     "undo of 'a' reads a step's output"),
])
def test_lint_checks_references(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = _write(tmp_path, "---\nhosts: web\n---\n```sh {name=disk kind=check}\ndf -P /\n```\n" + body)
    errors = [d for d in lint(path, tmp_path) if d.severity == "error"]
    assert any(d.line == line and d.message.startswith(message) for d in errors), [str(d) for d in errors]


def _view(verbose: bool = False) -> tuple[TextView, io.StringIO]:
    from rich.console import Console

    buf = io.StringIO()
    return TextView(Console(file=buf, force_terminal=False, color_system=None, width=200), verbose=verbose), buf


def _host_result(output: dict, status: str = "ok") -> Event:  # type: ignore[type-arg]
    return Event(Kind.HOST_RESULT, {"step": "disk", "host": "web1", "status": status, "changed": False,
                                    "changed_unknown": False, "duration": 0.1, "error": None, "phase": "run",
                                    "output": output, "reason": None})


def test_terminal_shows_the_last_lines_without_control_characters() -> None:
    lines = "\n".join(f"l{i}" for i in range(30)) + "\n\x1b[2J\x1b]0;pwned\x07evil\r"
    view, buf = _view()
    view.handle(_host_result({"stdout": lines, "stderr": "warn", "msg": None, "rc": 0, "truncated": False}))
    text = buf.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "│ l29" in text and "│ l10" not in text and "! warn" in text and "earlier line(s)" in text
    assert "[2J]0;pwnedevil" in text  # the bytes are gone, the text stays readable
    view, buf = _view(verbose=True)
    view.handle(_host_result({"stdout": lines, "stderr": "", "msg": None, "rc": 0, "truncated": False}))
    assert "│ l0" in buf.getvalue() and "earlier line(s)" not in buf.getvalue()


RECORD = {"run_id": "01a2", "runbook": "r", "outcome": "rolled_back",
          "steps": {"boom": {"order": 0, "status": "failed", "hosts": {
              "web1": {"status": "failed", "error": "boom: rc=4",
                       "output": {"stdout": "\n".join(str(i) for i in range(40)), "stderr": "oops", "msg": None,
                                  "rc": 4, "bytes": 120, "sha256": "ab" * 32, "truncated": True}}}}}}


def test_show_prints_the_last_lines_and_one_host_in_full() -> None:
    text = record_text(RECORD)
    assert "| 39" in text and "| 5\n" not in text and "show 01a2 --step boom --host web1" in text
    full = output_text(RECORD, "boom", "web1")
    assert full.startswith("boom on web1: failed (rc 4)") and "\n0\n1\n" in full and "--- stderr\noops" in full
    assert "sha256 " + "ab" * 32 in full
    from technician_ops.errors import NotFound

    with pytest.raises(NotFound):
        output_text(RECORD, "boom", "web9")
    with pytest.raises(NotFound):
        output_text(RECORD, "nope", "web1")
