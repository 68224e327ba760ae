"""The undo rule of docs/undo.md, table-driven over step states (saga.select), and the tracker's part in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from technician_ops.engine.executor import StepTracker
from technician_ops.engine.redact import Redactor
from technician_ops.engine.saga import select
from technician_ops.events import Bus
from technician_ops.plan.compiler import build_plan
from technician_ops.plan.loader import load_runbook
from technician_ops.state import HostState, HostStatus, StepState, StepStatus

RUNBOOK = """---
hosts: web
---

```yaml {name=keep kind=backup}
paths: [/etc/app.conf]
```

```yaml {name=patch}
- ansible.builtin.copy: {dest: /etc/app.conf, content: x}
```

```yaml {rollback=patch}
- ansible.builtin.file: {path: /etc/app.conf, state: absent}
```

```yaml {name=noted undo=none}
- ansible.builtin.copy: {dest: /tmp/note, content: x}
```

```yaml {name=covered undo=backup:keep}
- ansible.builtin.copy: {dest: /etc/app.conf, content: y}
```

```yaml {name=bare}
- ansible.builtin.copy: {dest: /etc/other, content: x}
```

```yaml {name=look kind=check}
- ansible.builtin.command: /bin/true
```
"""


@pytest.fixture
def plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "runbooks" / "undo-rules.md"
    path.parent.mkdir()
    path.write_text(RUNBOOK)
    return build_plan(load_runbook(path, tmp_path), tmp_path, {})


def state(name: str, status: StepStatus, **hosts: HostState) -> StepState:
    return StepState(name, status=status, hosts=dict(hosts))


OK, CHANGED, FAILED, UNKNOWN = HostStatus.OK, HostStatus.CHANGED, HostStatus.FAILED, HostStatus.UNKNOWN


@pytest.mark.parametrize(("name", "status", "hosts", "undone"), [
    ("patch", StepStatus.SUCCEEDED, {"a": HostState(CHANGED, True), "b": HostState(OK)}, ["a"]),
    ("patch", StepStatus.FAILED, {"a": HostState(CHANGED, True), "b": HostState(FAILED, True)}, ["a", "b"]),
    ("patch", StepStatus.FAILED, {"a": HostState(FAILED)}, []),  # failed before changing anything
    ("patch", StepStatus.SUCCEEDED, {"a": HostState(OK, changed_unknown=True)}, ["a"]),  # no_log hid it
    ("patch", StepStatus.FAILED, {"a": HostState(UNKNOWN)}, ["a"]),  # stopped mid-task
    ("look", StepStatus.SUCCEEDED, {"a": HostState(CHANGED, True)}, []),  # read-only: never undone
])
def test_a_step_is_undone_exactly_where_it_may_have_changed(plan, name, status, hosts, undone) -> None:  # type: ignore[no-untyped-def]
    chosen = select(plan, {name: state(name, status, **hosts)}, [name])
    assert [(ps.name, h) for ps, h in chosen.completed] == ([(name, undone)] if undone else [])
    assert chosen.missing == []
    assert chosen.changed_anything is bool(undone)


def test_declared_undos_and_missing_ones(plan) -> None:  # type: ignore[no-untyped-def]
    states = {
        "keep": state("keep", StepStatus.SUCCEEDED, a=HostState(CHANGED, True)),
        "noted": state("noted", StepStatus.SUCCEEDED, a=HostState(CHANGED, True)),
        "covered": state("covered", StepStatus.SUCCEEDED, a=HostState(CHANGED, True), b=HostState(CHANGED, True)),
        "bare": state("bare", StepStatus.FAILED, a=HostState(FAILED, True)),
    }
    chosen = select(plan, states, list(states), dead={"zz"})
    assert [(ps.name, h) for ps, h in chosen.completed] == [("keep", ["a"])]
    assert [(d["step"], d["undo"]) for d in chosen.declared] == [("noted", "none"), ("covered", "backup:keep")]
    assert sorted((m["step"], m["host"]) for m in chosen.missing) == [("bare", "a"), ("covered", "b")]


def test_an_unreachable_host_is_reported_never_retried(plan) -> None:  # type: ignore[no-untyped-def]
    chosen = select(plan, {"patch": state("patch", StepStatus.SUCCEEDED, a=HostState(CHANGED, True),
                                          b=HostState(CHANGED, True))}, ["patch"], dead={"b"})
    assert [(ps.name, h) for ps, h in chosen.completed] == [("patch", ["a"])]
    assert [(m["step"], m["host"]) for m in chosen.missing] == [("patch", "b")]


def _tracker() -> StepTracker:
    return StepTracker(Bus([]), {"patch": "patch"}, "run", Redactor([]))


def test_a_no_log_result_counts_as_changed_from_ansibles_own_line_or_as_unknown() -> None:
    tracker = _tracker()
    censored = {"censored": "the output has been hidden due to the fact that 'no_log: true' was specified"}
    tracker.handle({"event": "playbook_on_play_start", "event_data": {"play": "patch"}})
    for host, line in (("a", "changed: [a]"), ("b", "ok: [b]"), ("c", "")):
        tracker.handle({"event": "runner_on_ok", "stdout": line, "event_data": {"host": host, "res": censored}})
    tracker.finish(0)
    hosts = tracker.steps["patch"].hosts
    assert (hosts["a"].status, hosts["a"].may_have_changed) == (CHANGED, True)
    assert (hosts["b"].status, hosts["b"].may_have_changed) == (OK, False)
    assert hosts["c"].changed_unknown and hosts["c"].may_have_changed


def test_hosts_with_a_task_in_flight_when_stopped_are_unknown() -> None:
    tracker = _tracker()
    tracker.handle({"event": "playbook_on_play_start", "event_data": {"play": "patch"}})
    tracker.handle({"event": "runner_on_start", "event_data": {"host": "a"}})
    tracker.handle({"event": "runner_on_start", "event_data": {"host": "b"}})
    tracker.handle({"event": "runner_on_ok", "event_data": {"host": "b", "res": {"changed": False}}})
    tracker.finish(0, stopped=True)
    run = tracker.steps["patch"]
    assert run.status is StepStatus.FAILED
    assert run.hosts["a"].status is UNKNOWN and run.hosts["b"].status is OK
    assert run.changed_hosts == ["a"]


def test_a_failure_ignored_on_a_host_still_counts_what_it_changed() -> None:
    tracker = _tracker()
    tracker.handle({"event": "playbook_on_play_start", "event_data": {"play": "patch"}})
    tracker.handle({"event": "runner_on_failed", "event_data": {"host": "a", "ignore_errors": True,
                                                                 "res": {"changed": True, "rc": 1}}})
    tracker.finish(0)
    assert tracker.steps["patch"].changed_hosts == ["a"]


def test_a_host_that_fails_because_of_the_stop_is_unknown_not_unreachable() -> None:
    """Stopping kills a task's ssh; Ansible then says the host is unreachable. It was not: it is undone."""
    tracker = _tracker()
    tracker.handle({"event": "playbook_on_play_start", "event_data": {"play": "patch"}})
    tracker.handle({"event": "runner_on_start", "event_data": {"host": "a"}})
    tracker.stopping = True
    tracker.handle({"event": "runner_on_unreachable", "event_data": {"host": "a", "res": {"msg": "Data could not be sent"}}})
    tracker.finish(255, stopped=True)
    assert tracker.steps["patch"].hosts["a"].status is UNKNOWN and tracker.steps["patch"].changed_hosts == ["a"]


def test_a_result_too_large_for_ansible_runner_counts_from_ansibles_own_line() -> None:
    # ansible-runner replaces a result longer than MAX_EVENT_RES with {}: "changed" is then Ansible's line
    # or unknown, never "nothing changed" (that would skip the undo of a step that changed things).
    tracker = _tracker()
    tracker.handle({"event": "playbook_on_play_start", "event_data": {"play": "patch"}})
    for host, line in (("a", "changed: [a]"), ("b", "ok: [b]"), ("c", "")):
        tracker.handle({"event": "runner_on_ok", "stdout": line, "event_data": {"host": host, "res": {}}})
    tracker.handle({"event": "runner_on_failed", "stdout": "fatal: [d]: FAILED!", "event_data": {"host": "d", "res": {}}})
    tracker.finish(0)
    hosts = tracker.steps["patch"].hosts
    assert hosts["a"].may_have_changed and not hosts["b"].may_have_changed
    assert hosts["c"].changed_unknown and hosts["d"].changed_unknown
    assert "not kept" in (hosts["a"].output or {}).get("msg", "")


def test_long_streams_are_cut_in_the_event_written_to_disk() -> None:
    tracker = _tracker()
    tracker.handle({"event": "playbook_on_play_start", "event_data": {"play": "patch"}})
    event = {"event": "runner_on_ok", "event_data": {"host": "a", "res": {
        "changed": True, "stdout": "x" * 1_000_000, "stdout_lines": ["x" * 1_000_000], "stderr": "short"}}}
    assert tracker.handle(event) is True  # kept on disk, as cut here
    res = event["event_data"]["res"]
    assert len(res["stdout"]) < 70_000 and "characters cut" in res["stdout"] and "stdout_lines" not in res
    assert res["stderr"] == "short"
    tracker.finish(0)
    assert tracker.steps["patch"].hosts["a"].output["bytes"] == 1_000_005  # counted whole before the cut
