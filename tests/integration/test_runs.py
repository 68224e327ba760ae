"""Real runs through ansible-runner against local-connection hosts."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from technician_ops.api import RunRequest, run
from technician_ops.outputs.console import JsonView
from technician_ops.errors import ApprovalMissing, ExitCode, RunbookError
from technician_ops.events import Outcome

pytestmark = pytest.mark.integration


def run_demo(demo, name: str, params: dict[str, str] | None = None, **kw):  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    request = RunRequest(name, params or {}, run_id=kw.pop("run_id", f"t-{name}"), **kw)
    result = run(request, demo.project(), [JsonView(request.run_id or "", stream)])
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return result, events


def test_success_writes_every_host(demo) -> None:  # type: ignore[no-untyped-def]
    result, events = run_demo(demo, "deploy-config", {"version": "3.1", "demo_root": str(demo.hosts_dir)})
    assert result.outcome is Outcome.SUCCEEDED and result.exit_code == ExitCode.OK
    for host in ("web1", "web2"):
        assert (demo.host_dir(host) / "app.conf").read_text().startswith("version=3.1\n")
        assert (demo.host_dir(host) / "release.txt").read_text() == "3.1\n"
    assert not (demo.host_dir("db1") / "app.conf").exists()  # not a target
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert all(e["v"] == 1 and e["run_id"] == "t-deploy-config" for e in events)
    ends = [(e["step"], e["status"]) for e in events if e["event"] == "step_end"]
    assert ends == [("state-dir-present", "succeeded"), ("write-config", "succeeded"),
                    ("record-release", "succeeded"), ("verify", "succeeded")]
    hosts = {(e["step"], e["host"]): e["status"] for e in events if e["event"] == "host_result"}
    assert hosts[("write-config", "web1")] == "changed" and hosts[("verify", "web2")] == "ok"


def test_failure_rolls_back_completed_steps_in_reverse(demo) -> None:  # type: ignore[no-untyped-def]
    (demo.host_dir("web1") / "current").write_text("r0\n")
    result, events = run_demo(demo, "release-with-healthcheck", {"release": "r1"})
    assert result.outcome is Outcome.ROLLED_BACK and result.exit_code == ExitCode.ROLLED_BACK
    assert result.failed_step == "health-check"
    for host in ("web1", "web2"):
        journal = (demo.host_dir(host) / "journal").read_text().split()
        assert journal == ["save-previous", "ship", "undo-ship", "undo-save-previous"]
    assert (demo.host_dir("web1") / "current").read_text() == "r0\n"  # previous release restored
    assert not (demo.host_dir("web2") / "current").exists()  # had none before
    rb = [e for e in events if e["event"] == "rollback_start"][0]
    assert rb["steps"] == ["ship", "save-previous"]
    end = [e for e in events if e["event"] == "run_end"][0]
    assert end["outcome"] == "rolled_back" and end["failed_step"] == "health-check"
    assert sorted(end["failed_hosts"]) == ["web1", "web2"]


def test_healthy_release_succeeds_and_nothing_is_undone(demo) -> None:  # type: ignore[no-untyped-def]
    result, events = run_demo(demo, "release-with-healthcheck", {"release": "r2", "healthy": "true"})
    assert result.outcome is Outcome.SUCCEEDED
    assert (demo.host_dir("web1") / "journal").read_text().split() == ["save-previous", "ship"]
    assert not [e for e in events if e["event"] == "rollback_start"]


def test_failed_undo_is_rollback_failed(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("bad-undo", """---
hosts: web
---

```yaml {name=touch}
- ansible.builtin.copy: {dest: "{{ state_dir }}/touched", content: "x"}
```

```yaml {rollback=touch}
- ansible.builtin.command: /bin/false
```

```yaml {name=boom kind=check}
- ansible.builtin.fail: {msg: planned failure}
```
""")
    result, events = run_demo(demo, "bad-undo")
    assert result.outcome is Outcome.ROLLBACK_FAILED and result.exit_code == ExitCode.ROLLBACK_FAILED
    end = [e for e in events if e["event"] == "rollback_end"][0]
    assert sorted(f["host"] for f in end["failures"]) == ["web1", "web2"]
    assert all(f["step"] == "touch" for f in end["failures"])


def test_first_step_failing_changes_nothing_and_is_failed(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("early", "---\nhosts: web\n---\n\n```yaml {name=gate kind=check}\n- ansible.builtin.fail: {msg: nope}\n```\n\n"
                       "```yaml {name=later}\n- ansible.builtin.copy: {dest: \"{{ state_dir }}/later\", content: x}\n```\n"
                       "\n```yaml {rollback=later}\n- ansible.builtin.file: {path: \"{{ state_dir }}/later\", state: absent}\n```\n")
    result, _ = run_demo(demo, "early")
    assert result.outcome is Outcome.FAILED and result.exit_code == ExitCode.FAILED
    assert not (demo.host_dir("web1") / "later").exists()


def test_check_mode_changes_nothing(demo) -> None:  # type: ignore[no-untyped-def]
    result, events = run_demo(demo, "deploy-config", {"version": "9", "demo_root": str(demo.hosts_dir)}, check=True)
    for host in ("web1", "web2"):
        assert list(demo.host_dir(host).iterdir()) == []
    assert events[0]["check"] is True
    # write-config would change, verify (a check) really ran and failed: no app.conf
    statuses = {e["step"]: e["status"] for e in events if e["event"] == "step_end"}
    assert statuses["state-dir-present"] == "succeeded"
    assert result.outcome is Outcome.FAILED and result.failed_step == "verify"  # nothing was written to verify
    assert not [e for e in events if e["event"] == "rollback_start"]


def test_approval_refused_without_terminal_before_any_step(demo) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ApprovalMissing) as exc:
        run_demo(demo, "restart-with-approval", {"reason": "test"})
    assert "confirm-restart" in exc.value.message and "--approve confirm-restart" in (exc.value.hint or "")
    assert not (demo.host_dir("db1") / "restarted-at").exists()
    assert not (demo.root / ".technician-ops" / "runs").exists()  # ansible never started


def test_approval_by_flag_runs_and_is_reported(demo) -> None:  # type: ignore[no-untyped-def]
    result, events = run_demo(demo, "restart-with-approval", {"reason": "test"}, approve=("confirm-restart",))
    assert result.outcome is Outcome.SUCCEEDED
    assert (demo.host_dir("db1") / "restarted-at").exists()
    approvals = [e for e in events if e["event"] == "approval"]
    assert approvals == [{**approvals[0], "step": "confirm-restart", "approved": True, "by": "--approve"}]


def test_terminal_prompt_answer_no_rolls_back(demo) -> None:  # type: ignore[no-untyped-def]
    asked: list[str] = []

    def prompt(step: str, text: str) -> bool:
        asked.append(step)
        return False

    demo.write_runbook("gated", "---\nhosts: web\n---\n\n```yaml {name=one}\n- ansible.builtin.copy: {dest: \"{{ state_dir }}/one\", content: x}\n```\n\n"
                       "```yaml {rollback=one}\n- ansible.builtin.file: {path: \"{{ state_dir }}/one\", state: absent}\n```\n\n"
                       "```text {name=ok kind=approve}\nContinue?\n```\n\n"
                       "```yaml {name=two}\n- ansible.builtin.copy: {dest: \"{{ state_dir }}/two\", content: x}\n```\n\n"
                       "```yaml {rollback=two}\n- ansible.builtin.file: {path: \"{{ state_dir }}/two\", state: absent}\n```\n")
    result, _ = run_demo(demo, "gated", prompt=prompt)
    assert asked == ["ok"]
    assert result.outcome is Outcome.ROLLED_BACK and result.failed_step == "ok"
    assert not (demo.host_dir("web1") / "one").exists() and not (demo.host_dir("web1") / "two").exists()


def test_syntax_error_never_starts_ansible(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("broken", "---\nhosts: web\n---\n\n```yaml {name=a\n- ansible.builtin.ping:\n```\n")
    with pytest.raises(RunbookError) as exc:
        run_demo(demo, "broken")
    assert "broken.md:5: malformed attribute block" in str(exc.value)
    assert not (demo.root / ".technician-ops" / "runs").exists()


def test_secret_parameter_never_written(demo) -> None:  # type: ignore[no-untyped-def]
    secret = "canary-" + os.urandom(8).hex() + " 'q\"$x"
    demo.write_runbook("secretive", """---
hosts: web
params:
  token: {type: secret, required: true}
---

```bash {name=use kind=check}
test -n "$TOKEN" && echo "token is $TOKEN"
printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1 > "$DEMO_HASH_DIR/$TECHNICIAN_OPS_HOST.sha"
```

```yaml {name=use-in-task kind=check}
- ansible.builtin.command: echo {{ token }}
- ansible.builtin.fail: {msg: "bad {{ token }}"}
```
""")
    demo.write_runbook("secretive", demo.root.joinpath("runbooks", "secretive.md").read_text().replace(
        "  token: {type: secret, required: true}", f"  token: {{type: secret, required: true}}\n  demo_hash_dir: {{type: string, default: {demo.hosts_dir}}}"))
    result, events = run_demo(demo, "secretive", {"token": secret})
    assert result.outcome is Outcome.FAILED  # the fail task ran with the value: the lookup worked
    import hashlib

    # the script saw exactly the value (quotes, spaces and $ intact), through stdin
    assert (demo.hosts_dir / "web1.sha").read_text().strip() == hashlib.sha256(secret.encode()).hexdigest()
    text = json.dumps(events)
    assert secret not in text
    for path in demo.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_cli_json_output_and_exit_code(demo) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "run",
                           "release-with-healthcheck", "-p", "release=r9", "--output", "json"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert events[-1]["outcome"] == "rolled_back" and events[-1]["exit_code"] == 3


def test_json_events_follow_the_documented_schema(demo) -> None:  # type: ignore[no-untyped-def]
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "events.schema.json").read_text())
    _result, events = run_demo(demo, "release-with-healthcheck", {"release": "r3"}, run_id="schema")
    required = schema["x-required-by-event"]
    seen = set()
    for event in events:
        assert event["v"] == schema["properties"]["v"]["const"]
        assert event["event"] in schema["properties"]["event"]["enum"]
        assert isinstance(event["ts"], float) and event["run_id"] == "schema"
        missing = [k for k in required[event["event"]] if k not in event]
        assert not missing, (event["event"], missing)
        if "phase" in event:
            assert event["phase"] in schema["x-enums"]["phase"]
        seen.add(event["event"])
    assert {"run_start", "step_start", "host_result", "step_end", "rollback_start", "rollback_end", "run_end"} <= seen


def _gathered(artifact_dir: Path) -> list[str]:
    """Hosts the run gathered facts on (its ansible-runner job events)."""
    hosts = []
    for path in sorted(artifact_dir.rglob("job_events/*.json")):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("task_action") in ("gather_facts", "ansible.builtin.gather_facts"):
            hosts.append(data["host"])
    return sorted(hosts)


def test_facts_are_gathered_only_for_steps_that_read_them_then_cached(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("by-hostname", """---
hosts: web
---

```yaml {name=plain kind=check}
- ansible.builtin.command: /bin/true
  changed_when: false
```

```yaml {name=note-hostname}
- ansible.builtin.copy:
    dest: "{{ state_dir }}/hostname"
    content: "{{ ansible_facts['hostname'] }} {{ ansible_nodename }}\\n"
```

```yaml {rollback=note-hostname}
- ansible.builtin.file: {path: "{{ state_dir }}/hostname", state: absent}
```
""")
    first, _ = run_demo(demo, "by-hostname", run_id="t-facts-1")
    assert first.outcome is Outcome.SUCCEEDED
    short = socket.gethostname().split(".")[0]
    for host in ("web1", "web2"):
        assert (demo.host_dir(host) / "hostname").read_text().startswith(short + " ")
    assert _gathered(first.artifact_dir) == ["web1", "web2"]  # once, for the step that reads them
    cache = demo.project().state_dir / "facts"
    # One file per host (ansible-core 2.19 prefixes the name with its schema version: s1_web1).
    files = {h: f for h in ("web1", "web2") for f in cache.iterdir() if f.name.endswith(h)}
    assert len(list(cache.iterdir())) == 2 and set(files) == {"web1", "web2"}
    assert short in files["web1"].read_text()

    second, _ = run_demo(demo, "by-hostname", run_id="t-facts-2")
    assert second.outcome is Outcome.SUCCEEDED
    assert _gathered(second.artifact_dir) == []  # the cache answered

    files["web1"].unlink()  # e.g. expired: that host alone is gathered again
    third, _ = run_demo(demo, "by-hostname", run_id="t-facts-3")
    assert third.outcome is Outcome.SUCCEEDED and _gathered(third.artifact_dir) == ["web1"]
