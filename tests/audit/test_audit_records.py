"""Record contents for each outcome, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from technician_ops.audit import AuditStore
from technician_ops.audit.chain import GENESIS, canonical_json, chain_hash
from technician_ops.audit.sink import AuditSink
from technician_ops.errors import AuditError, NotFound
from technician_ops.events import Bus, Kind

from tests.audit.helpers import ev, finished_run, make_header, step


def _body_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k not in ("prev_hash", "hash")}
    return chain_hash(record["prev_hash"], canonical_json(body))


def test_succeeded_record_holds_everything(store: AuditStore) -> None:
    header = make_header(origin="ci")
    rid = header["run_id"]
    store.start_run(header)
    store.append(rid, ev(Kind.RUN_START, run_id=rid, runbook="db-failover"))
    store.append(rid, ev(Kind.APPROVAL, step="promote", approved=True, by="flag", user="alice"))
    step(store, rid, "standby-caught-up", {"db2": ("ok", False, None)}, kind="check")
    step(store, rid, "promote", {"db2": ("changed", True, None), "db3": ("ok", False, None)})
    store.append(rid, ev(Kind.ARTIFACT, type="backup", location="/backups/db2.tar", sha256="cd" * 32))
    store.append(rid, ev(Kind.ARTIFACT, type="secret_version", path="kv/app/db", key="password",
                         previous=3, current=4))
    store.append(rid, ev(Kind.ARTIFACT, type="terraform_plan", module="infra/dns", add=1, change=0, destroy=0))
    store.append(rid, ev(Kind.NOTICE, level="warning", message="standby lag was 12 bytes"))
    store.append(rid, ev(Kind.RUN_END, outcome="succeeded", exit_code=0, duration=2.5, failed_step=None,
                         failed_hosts=[]))
    rec = store.finish(rid, "succeeded")

    assert rec["run_id"] == rid and rec["runbook"] == "db-failover"
    assert rec["path"] == "runbooks/db-failover.md" and rec["runbook_sha256"] == "ab" * 32
    assert rec["git"] == header["git"] and rec["params"]["replication_password"] == "***"
    assert rec["operator"]["user"] == "alice"
    assert rec["origin"] == {"type": "ci", "system": "github", "run_id": "42", "url": "https://ci.invalid/run/42"}
    assert rec["outcome"] == "succeeded" and rec["exit_code"] == 0 and rec["check"] is False
    assert rec["started_at"].endswith("Z") and rec["ended_at"] >= rec["started_at"]
    assert rec["duration"] == 2.5
    assert rec["artifact_dir"] == "/tmp/artifacts/x"
    assert [a["step"] for a in rec["approvals"]] == ["promote"] and rec["approvals"][0]["approved"] is True
    assert list(sorted(rec["steps"], key=lambda n: rec["steps"][n]["order"])) == ["standby-caught-up", "promote"]
    promote = rec["steps"]["promote"]
    assert promote["status"] == "succeeded" and promote["kind"] == "ansible" and promote["duration"] == 0.5
    assert promote["hosts"]["db2"] == {"status": "changed", "changed": True, "duration": 0.25, "error": None}
    assert promote["hosts"]["db3"]["status"] == "ok"
    assert rec["steps"]["standby-caught-up"]["kind"] == "check"
    assert rec["artifacts"]["backup"][0]["sha256"] == "cd" * 32
    assert rec["artifacts"]["secret_version"][0]["current"] == 4
    assert rec["artifacts"]["terraform_plan"][0]["add"] == 1
    assert rec["notices"][0]["level"] == "warning"
    assert rec["rollback"] is None
    assert rec["events"] == 14
    # Chain fields: first record links to genesis and its hash covers its body.
    assert rec["seq"] == 1 and rec["prev_hash"] == GENESIS and rec["hash"] == _body_hash(rec)
    assert store.get(rid) == rec
    assert store.get(rid[:13]) == rec


def test_failed_record_names_failed_step_and_host_error(store: AuditStore) -> None:
    header = make_header()
    rid = header["run_id"]
    store.start_run(header)
    step(store, rid, "promote", {"db2": ("failed", False, "pg_ctl: server did not promote")}, status="failed")
    store.append(rid, ev(Kind.RUN_END, outcome="failed", exit_code=1, failed_step="promote",
                         failed_hosts=["db2"]))
    rec = store.finish(rid, "failed")
    assert rec["outcome"] == "failed" and rec["exit_code"] == 1
    assert rec["failed_step"] == "promote" and rec["failed_hosts"] == ["db2"]
    assert rec["steps"]["promote"]["status"] == "failed"
    assert rec["steps"]["promote"]["hosts"]["db2"]["error"] == "pg_ctl: server did not promote"


def test_rolled_back_record_keeps_undo_steps_apart(store: AuditStore) -> None:
    header = make_header()
    rid = header["run_id"]
    store.start_run(header)
    step(store, rid, "stop-app", {"web1": ("changed", True, None)})
    step(store, rid, "promote", {"db2": ("changed", True, None)})
    step(store, rid, "repoint", {"web1": ("failed", False, "timeout")}, status="failed")
    store.append(rid, ev(Kind.ROLLBACK_START, steps=["promote", "stop-app"]))
    step(store, rid, "promote", {"db2": ("changed", True, None)}, phase="rollback")
    step(store, rid, "stop-app", {"web1": ("failed", False, "unit not found")}, status="failed", phase="rollback")
    store.append(rid, ev(Kind.ROLLBACK_END, outcome="failed",
                         failures=[{"step": "stop-app", "host": "web1", "error": "unit not found"}]))
    store.append(rid, ev(Kind.RUN_END, outcome="rollback_failed", exit_code=4, failed_step="repoint"))
    rec = store.finish(rid, "rollback_failed")
    assert rec["outcome"] == "rollback_failed"
    # Main steps keep their forward-phase results, untouched by the undo.
    assert set(rec["steps"]) == {"stop-app", "promote", "repoint"}
    assert rec["steps"]["stop-app"]["status"] == "succeeded"
    assert rec["steps"]["stop-app"]["hosts"]["web1"]["changed"] is True
    rb = rec["rollback"]
    assert rb["planned"] == ["promote", "stop-app"]
    assert set(rb["steps"]) == {"promote", "stop-app"}
    assert rb["steps"]["promote"]["phase"] == "rollback" and rb["steps"]["promote"]["status"] == "succeeded"
    assert rb["steps"]["stop-app"]["hosts"]["web1"]["error"] == "unit not found"
    assert rb["outcome"] == "failed" and rb["failures"][0]["step"] == "stop-app"


def test_rolled_back_outcome(store: AuditStore) -> None:
    header = make_header()
    rid = header["run_id"]
    store.start_run(header)
    step(store, rid, "promote", {"db2": ("changed", True, None)})
    step(store, rid, "repoint", {"web1": ("failed", False, "boom")}, status="failed")
    store.append(rid, ev(Kind.ROLLBACK_START, steps=["promote"]))
    step(store, rid, "promote", {"db2": ("changed", True, None)}, phase="rollback")
    store.append(rid, ev(Kind.ROLLBACK_END, outcome="succeeded", failures=[]))
    rec = store.finish(rid, "rolled_back")
    assert rec["outcome"] == "rolled_back"
    assert rec["rollback"]["outcome"] == "succeeded" and rec["rollback"]["failures"] == []
    assert rec["rollback"]["steps"]["promote"]["hosts"]["db2"]["status"] == "changed"


def test_check_run_is_marked(store: AuditStore) -> None:
    rec = finished_run(store, check=True)
    assert rec["check"] is True
    assert store.history()[0]["check"] is True


@pytest.mark.parametrize("outcome, reason", [("skipped", "lock pg-cluster held by run 0191..."),
                                             ("refused", "runbooks/x.md:3: unknown parameter 'prmary'"),
                                             ("awaiting_approval", "step(s) confirm need approval: held")])
def test_never_started_runs_are_recorded(store: AuditStore, outcome: str, reason: str) -> None:
    header = make_header()
    rec = store.record_skipped(header, reason, outcome)
    assert rec["outcome"] == outcome and rec["reason"] == reason
    assert rec["steps"] == {} and rec["events"] == 0
    assert rec["ended_at"] == rec["started_at"]
    assert rec["seq"] == 1
    assert store.verify().ok


def test_record_skipped_defaults_to_skipped(store: AuditStore) -> None:
    assert store.record_skipped(make_header(), "lock held")["outcome"] == "skipped"
    with pytest.raises(AuditError):
        store.record_skipped(make_header(), "no", "succeeded")


def test_a_held_run_is_released_once(store: AuditStore, backend: Any) -> None:
    held = store.record_skipped({**make_header(), "request": {"runbook": "rb", "params": {}, "limit": None}},
                                "held", "awaiting_approval")["run_id"]
    assert store.claim_release(held, "0191aaaa-0000-7000-8000-000000000001", "alice") is None
    taken = backend.open().claim_release(held.upper(), "0191aaaa-0000-7000-8000-000000000002", "bob")  # another process
    assert taken is not None and (taken["run_id"], taken["released_by"]) == ("0191aaaa-0000-7000-8000-000000000001",
                                                                            "alice")
    store.drop_release(held, "0191aaaa-0000-7000-8000-000000000002")  # not its claim: nothing dropped
    assert store.claim_release(held, "0191aaaa-0000-7000-8000-000000000003", "carol") is not None
    store.drop_release(held, "0191aaaa-0000-7000-8000-000000000001")
    assert store.claim_release(held, "0191aaaa-0000-7000-8000-000000000003", "carol") is None
    assert store.verify().ok  # a claim is beside the chain, never in it


def test_interrupted_by_signal_keeps_what_ran(store: AuditStore) -> None:
    header = make_header()
    rid = header["run_id"]
    store.start_run(header)
    step(store, rid, "promote", {"db2": ("changed", True, None)})
    store.append(rid, ev(Kind.STEP_START, step="repoint", kind="ansible", hosts=["web1"], phase="run"))
    rec = store.finish(rid, "interrupted")  # what the engine does on SIGTERM
    assert rec["outcome"] == "interrupted"
    assert rec["steps"]["promote"]["status"] == "succeeded"
    assert rec["steps"]["repoint"]["status"] == "running"  # it was running when the signal came


def test_running_run_is_visible_but_not_chained(store: AuditStore) -> None:
    header = make_header()
    rid = header["run_id"]
    store.start_run(header)
    step(store, rid, "promote", {"db2": ("changed", True, None)})
    live = store.get(rid)
    assert live["outcome"] == "running" and live["seq"] is None and live["hash"] is None
    assert live["steps"]["promote"]["hosts"]["db2"]["changed"] is True
    assert store.history()[0]["outcome"] == "running"
    assert store.verify().checked == 0 and store.verify().ok


def test_finish_is_idempotent(store: AuditStore) -> None:
    header = make_header()
    store.start_run(header)
    first = store.finish(header["run_id"], "succeeded")
    again = store.finish(header["run_id"], "failed")
    assert again == first and again["outcome"] == "succeeded"
    assert store.verify().checked == 1


def test_append_refuses_finished_and_unknown_runs(store: AuditStore) -> None:
    rec = finished_run(store)
    with pytest.raises(AuditError, match="already finished"):
        store.append(rec["run_id"], ev(Kind.NOTICE, level="info", message="late"))
    with pytest.raises(AuditError, match="no such run"):
        store.append("0190aaaa-0000-7000-8000-000000000000", ev(Kind.NOTICE, level="info", message="x"))


def test_start_run_rejects_duplicates_and_bad_outcomes(store: AuditStore) -> None:
    header = make_header()
    store.start_run(header)
    with pytest.raises(AuditError, match="already recorded"):
        store.start_run(header)
    with pytest.raises(AuditError, match="unknown run outcome"):
        store.finish(header["run_id"], "great")
    with pytest.raises(AuditError, match="missing"):
        store.start_run({"runbook": "x"})


def test_get_by_prefix_not_found_and_ambiguous(store: AuditStore) -> None:
    a = finished_run(store)
    b = finished_run(store)
    assert store.get(a["run_id"].upper())["run_id"] == a["run_id"]
    common = 0
    while a["run_id"][common] == b["run_id"][common]:
        common += 1
    assert store.get(b["run_id"][: common + 1])["run_id"] == b["run_id"]
    with pytest.raises(NotFound, match="ambiguous"):
        store.get(a["run_id"][:common])
    with pytest.raises(NotFound):
        store.get("ffffffff")
    with pytest.raises(NotFound):
        store.get("'; drop table runs; --")


def test_sink_records_the_bus_stream(store: AuditStore) -> None:
    header = make_header()
    store.start_run(header)
    with AuditSink(store, header["run_id"]) as sink:  # asynchronous: closing drains it before finish
        bus = Bus([sink])
        # (Bus.emit(kind, **data) cannot carry STEP_START's own "kind" field: reported to the lead.)
        bus.emit(Kind.HOST_RESULT, step="promote", host="db2", status="ok", changed=False, duration=1.0,
                 error=None, phase="run")
        bus.emit(Kind.STEP_END, step="promote", status="succeeded", duration=1.0, phase="run", hosts={"db2": "ok"})
    rec = store.finish(header["run_id"], "succeeded")
    assert rec["steps"]["promote"]["hosts"]["db2"]["status"] == "ok" and rec["events"] == 2


def test_history_filters_and_order(store: AuditStore) -> None:
    runs = [
        finished_run(store, "db-failover", "succeeded", started_at="2025-03-01T10:00:00Z"),
        finished_run(store, "patch-web", "failed", started_at="2025-03-02T10:00:00Z", user="bob", origin="cron"),
        finished_run(store, "db-failover", "rolled_back", started_at="2025-03-03T10:00:00+02:00"),
        finished_run(store, "db-failover", "succeeded", started_at="2025-03-04T10:00:00Z", check=True),
    ]
    ids = [r["run_id"] for r in runs]
    all_rows = store.history()
    assert [r["run_id"] for r in all_rows] == ids[::-1]
    assert all_rows[0].keys() >= {"run_id", "runbook", "outcome", "started_at", "ended_at", "user", "origin",
                                  "check"}
    assert all_rows[2] | {} == all_rows[2] and all_rows[2]["user"] == "bob" and all_rows[2]["origin"] == "cron"
    assert all_rows[1]["started_at"] == "2025-03-03T08:00:00.000000Z"  # normalised to UTC
    assert [r["run_id"] for r in store.history(runbook="db-failover")] == [ids[3], ids[2], ids[0]]
    assert [r["run_id"] for r in store.history(outcome="succeeded")] == [ids[3], ids[0]]
    assert [r["run_id"] for r in store.history(runbook="db-failover", outcome="succeeded", limit=1)] == [ids[3]]
    import datetime as dt

    since = dt.datetime(2025, 3, 2, 12, tzinfo=dt.timezone.utc)
    assert [r["run_id"] for r in store.history(since=since)] == [ids[3], ids[2]]
    assert store.history(runbook="nope") == []
    assert len(store.history(limit=2)) == 2


def test_history_names_the_controller_from_the_record_the_header_or_the_host(store: AuditStore, backend: Any) -> None:
    import socket

    sealed = finished_run(store, "db-failover", "succeeded", started_at="2025-03-01T10:00:00Z",
                          controller={"name": "ctl-eu", "host": "box1"})
    older = finished_run(store, "db-failover", "succeeded", started_at="2025-03-02T10:00:00Z")  # no controller
    running = make_header("patch-web", started_at="2025-03-03T10:00:00Z", controller={"name": "ctl-us", "host": "b"})
    store.start_run(running)
    rows = {r["run_id"]: r["controller"] for r in store.history()}
    assert rows == {sealed["run_id"]: "ctl-eu", older["run_id"]: socket.gethostname(), running["run_id"]: "ctl-us"}
    assert [r["run_id"] for r in store.history(controller="ctl-us")] == [running["run_id"]]
    assert [r["run_id"] for r in store.history(controller=socket.gethostname())] == [older["run_id"]]
    assert store.history(controller="ctl-eu' OR '1'='1") == []  # a value, never SQL
    # A sealed run's controller is read from its hashed record: an edited header column forges nothing.
    backend.raw("UPDATE runs SET header = ? WHERE run_id = ?",
                '{"controller": {"name": "forged"}}', sealed["run_id"])
    assert [r["controller"] for r in store.history() if r["run_id"] == sealed["run_id"]] == ["ctl-eu"]
