"""A phase over execution nodes without a network: the gates' decisions, one merged stream, the playbooks
each participant gets, and the tracker's gate hook (engine/fanout.py, plan/compiler.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from technician_ops.engine.executor import StepTracker
from technician_ops.engine.fanout import Gates, Merger, merged
from technician_ops.engine.redact import Redactor
from technician_ops.events import Kind
from technician_ops.plan.compiler import GATE_PLAY, bind_plan
from technician_ops.plan.loader import load_runbook
from technician_ops.project import load_project

from tests.unit.test_compiler import RUNBOOK


def _gates(*names: str, phase: str = "run", stopping: Any = None) -> tuple[Gates, list[int]]:
    passed: list[int] = []
    return Gates(list(names), phase, stopping or (lambda: None), lambda: passed.append(1)), passed


def _ask(gates: Gates, who: str, index: int, phase: str = "run") -> dict[str, Any]:
    return gates.handle({"participant": who, "index": index, "phase": phase})


def _later(fn: Any, delay: float = 0.3) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), fn()))
    thread.start()
    return thread


def test_a_gate_opens_once_every_stream_is_there() -> None:
    gates, passed = _gates("local", "site-a", "site-b")
    gates.arrived("local", 1)
    gates.arrived("site-a", 1)
    late = _later(lambda: gates.arrived("site-b", 1))
    started = time.monotonic()
    assert _ask(gates, "local", 1) == {"ok": True, "go": True, "reason": ""}
    assert time.monotonic() - started >= 0.25  # it waited for site-b's stream
    late.join()
    assert _ask(gates, "site-b", 1)["go"] is True and passed == [1]  # decided (and flushed) once


def test_a_participant_that_ended_before_the_gate_stops_the_others() -> None:
    gates, _ = _gates("local", "site-b")
    gates.arrived("local", 1)
    gates.end("site-b")  # its step failed: its playbook ended
    reply = _ask(gates, "local", 1)
    assert reply["go"] is False and "execution node site-b stopped before step 2" in reply["reason"]


def test_a_lost_node_stops_the_others_at_the_next_gate() -> None:
    gates, _ = _gates("local", "site-a", "site-b")
    gates.arrived("local", 2)
    gates.arrived("site-a", 2)
    gates.end("site-b", lost="its stream ended")
    reply = _ask(gates, "site-a", 2)
    assert reply["go"] is False and reply["reason"] == "execution node site-b was lost"


def test_a_stopping_run_stops_at_the_gate_even_before_everyone_is_there() -> None:
    flag: list[str] = []
    gates, _ = _gates("local", "site-a", stopping=lambda: flag[0] if flag else None)
    gates.arrived("local", 1)
    _later(lambda: flag.append("timeout"))
    assert _ask(gates, "local", 1) == {"ok": True, "go": False, "reason": "the runbook's timeout ran out"}


def test_undo_gates_let_everyone_go_whatever_ended_early_or_stops() -> None:
    gates, _ = _gates("local", "site-a", phase="rollback", stopping=lambda: "cancelled")
    gates.arrived("local", 1)
    gates.end("site-a")
    assert _ask(gates, "local", 1, "rollback")["go"] is True
    gates2, _ = _gates("local", phase="rollback", stopping=lambda: "interrupted")  # a second Ctrl-C does stop
    assert _ask(gates2, "local", 1, "rollback")["go"] is False


@pytest.mark.parametrize("request_", [{"participant": "intruder", "index": 1, "phase": "run"},
                                      {"participant": "local", "index": 1, "phase": "rollback"},
                                      {"participant": "local", "index": 0, "phase": "run"}])
def test_a_gate_request_from_no_participant_or_phase_is_refused(request_: dict[str, Any]) -> None:
    gates, _ = _gates("local")
    assert gates.handle(request_)["ok"] is False


class Bus:
    def __init__(self) -> None:
        self.events: list[tuple[Kind, dict[str, Any]]] = []

    def emit(self, kind: Kind, /, **data: Any) -> None:
        self.events.append((kind, data))


def _play(name: str) -> dict[str, Any]:
    return {"event": "playbook_on_play_start", "event_data": {"play": name}}


def _task(name: str) -> dict[str, Any]:
    return {"event": "playbook_on_task_start", "event_data": {"task": name}}


def _ok(host: str, task: str = "t1", changed: bool = True) -> dict[str, Any]:
    return {"event": "runner_on_ok", "event_data": {"host": host, "task": task, "res": {"changed": changed},
                                                    "duration": 0.5}}


def _failed(host: str) -> dict[str, Any]:
    return {"event": "runner_on_failed", "event_data": {"host": host, "task": "t1", "res": {"msg": "boom"}}}


def _tracker(sink: Any) -> StepTracker:
    return StepTracker(sink, {"s1": "s1", "s2": "s2"}, "run", Redactor([]), {"s1": "ansible", "s2": "ansible"},
                       {"s1": "all", "s2": "all"})


def test_two_participants_make_one_stream_and_one_state() -> None:
    bus = Bus()
    merger = Merger(bus)
    gates, _ = _gates("local", "site-b")
    gates.on_pass = merger.flush
    local, node = _tracker(merger.sink("local")), _tracker(merger.sink("site-b"))
    local.on_gate = lambda i: gates.arrived("local", i)
    node.on_gate = lambda i: gates.arrived("site-b", i)
    for tracker, host in ((local, "db1"), (node, "web2")):
        for event in (_play("s1"), _task("t1"), _ok(host), _play(f"{GATE_PLAY} run 1")):
            tracker.handle(event)
    assert [k for k, _ in bus.events] == [Kind.STEP_START, Kind.TASK_START]  # once each; the ends wait
    assert _ask(gates, "site-b", 1)["go"] is True
    kinds = [k for k, _ in bus.events]
    assert kinds == [Kind.STEP_START, Kind.TASK_START, Kind.HOST_RESULT, Kind.HOST_RESULT, Kind.STEP_END]
    results = {d["host"]: d for k, d in bus.events if k is Kind.HOST_RESULT}
    assert "node" not in results["db1"] and results["web2"]["node"] == "site-b"
    end = bus.events[-1][1]
    assert end["status"] == "succeeded" and end["hosts"] == {"db1": "changed", "web2": "changed"}
    # Step 2 fails on the node only: the merged step failed; the merged state says so, per host.
    for tracker, event in ((local, _ok("db1")), (node, _failed("web2"))):
        tracker.handle(_play("s2"))
        tracker.handle(event)
        tracker.finish(0 if tracker is local else 2)
    merger.flush()
    assert bus.events[-1][0] is Kind.STEP_END and bus.events[-1][1]["status"] == "failed"
    state = merged({"local": local, "site-b": node}, merger.order, {}, {"local": ["db1"], "site-b": ["web2"]})
    assert state.order == ["s1", "s2"] and state.steps["s2"].status.value == "failed"
    assert state.steps["s2"].failed_hosts == ["web2"] and sorted(state.steps["s1"].changed_hosts) == ["db1", "web2"]
    lost = merged({"local": local, "site-b": node}, merger.order, {"site-b": "cut"}, {"site-b": ["web2", "db2"]})
    assert lost.lost == {"web2": "site-b", "db2": "site-b"}


def test_a_gate_play_named_by_someone_else_is_an_ordinary_play() -> None:
    bus = Bus()
    tracker = _tracker(bus)
    calls: list[int] = []
    tracker.on_gate = calls.append
    tracker.handle(_play("s1"))
    tracker.handle(_play(f"{GATE_PLAY} run soon"))  # not ours: no index
    tracker.handle(_ok("web1"))
    assert calls == [] and tracker.current is not None and tracker.current.name == "s1"


@pytest.fixture
def plan(tmp_path: Path) -> Any:
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "c.md").write_text(RUNBOOK)
    project = load_project(tmp_path, environ={})
    return bind_plan(load_runbook(tmp_path / "runbooks" / "c.md", tmp_path), project, {"token": "x"}, environ={})


def test_each_participant_gets_every_step_with_a_gate_between(plan: Any) -> None:
    names = [ps.name for ps in plan.steps]
    assert names == ["write", "script", "gate", "use-secret"]
    assert plan.playbook() == [p for _, plays in plan.playbook_parts() for p in plays]  # unchanged without nodes
    local = [p["name"] for p in plan.participant_playbook(node=False)]
    node = [p["name"] for p in plan.participant_playbook(node=True)]
    gate = [f"{GATE_PLAY} run {i}" for i in (1, 2, 3)]
    assert local == ["write", gate[0], "script", gate[1], "gate", gate[2], "use-secret"]
    assert node == ["write", gate[0], "script", gate[1], gate[2], "use-secret"]  # approve stays on the controller
    first_gate = plan.participant_playbook(node=True)[1]
    assert first_gate["hosts"] == "localhost" and first_gate["any_errors_fatal"] is True
    assert "always" in first_gate["tags"]  # --tags never skips a gate
    assert first_gate["tasks"][0]["technician_ops_gate"] == {"index": 1, "phase": "run"}


def test_a_participants_undo_keeps_the_gates_and_drops_what_it_has_no_host_for(plan: Any) -> None:
    write, script = plan.steps[0], plan.steps[1]
    plays = plan.rollback_playbook([(write, ["web1"]), (script, [])], ["web1"], gates=True)
    assert [p["name"] for p in plays] == ["stop:leftovers", f"{GATE_PLAY} rollback 1", "undo:write"]
    alone = plan.rollback_playbook([(write, ["web1"]), (script, ["db1"])])
    assert [p["name"] for p in alone] == ["undo:script", "undo:write"]  # no gates without nodes


def test_a_crashed_runs_replay_reads_every_participants_stream(plan: Any, tmp_path: Path) -> None:
    import json

    from technician_ops.engine.past_runs import _replayed

    def write(directory: str, events: list[dict[str, Any]]) -> None:
        target = tmp_path / "artifacts" / directory / "job_events"
        target.mkdir(parents=True)
        for i, event in enumerate(events, 1):
            (target / f"{i}-u{i}.json").write_text(json.dumps({**event, "counter": i, "uuid": f"u{i}"}))

    write("run", [_play("write"), _ok("web1")])
    write("run@site-b", [_play("write"), _ok("web2"), {"event": "runner_on_start",
                                                       "event_data": {"host": "web3", "task": "t1"}}])
    states = _replayed(plan, {"artifact_dir": str(tmp_path)})
    hosts = {h: a.status.value for h, a in states["write"].hosts.items()}
    assert hosts == {"web1": "changed", "web2": "changed", "web3": "unknown"}  # web3: in flight when it ended
