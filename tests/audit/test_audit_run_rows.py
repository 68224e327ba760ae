"""``run_rows``, the query ``stats`` reads: same answers from SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from technician_ops.audit import AuditStore
from tests.audit.conftest import Backend
from tests.audit.helpers import finished_run, make_header

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def at(minutes: int) -> str:
    return (T0 + dt.timedelta(minutes=minutes)).isoformat()


def test_rows_are_grouped_by_runbook_oldest_first_and_filtered(store: AuditStore) -> None:
    late = finished_run(store, "b-runbook", "succeeded", started_at=at(30))
    early = finished_run(store, "b-runbook", "rolled_back", started_at=at(10))
    other = finished_run(store, "a-runbook", "failed", started_at=at(20), check=True)
    skipped = store.record_skipped(make_header("a-runbook", started_at=at(40)), "lock held")

    rows = store.run_rows()
    assert [r.run_id for r in rows] == [other["run_id"], skipped["run_id"], early["run_id"], late["run_id"]]
    first = rows[0]
    assert (first.runbook, first.outcome, first.check, first.reaped) == ("a-runbook", "failed", True, False)
    assert first.started_at == other["started_at"] and first.ended_at == other["ended_at"]
    assert [r.run_id for r in store.run_rows("b-runbook")] == [early["run_id"], late["run_id"]]
    assert [r.run_id for r in store.run_rows(since=T0 + dt.timedelta(minutes=20))] == [
        other["run_id"], skipped["run_id"], late["run_id"]]
    assert store.run_rows("nope") == []


def test_a_reaped_interrupted_run_is_flagged_a_signalled_one_is_not(backend: Backend, store: AuditStore) -> None:
    signalled = finished_run(store, "rb", "interrupted", started_at=at(0))
    header = make_header("rb", started_at=at(5))
    store.start_run(header)
    backend.raw("UPDATE runs SET writer_start = 'another-boot:1' WHERE run_id = ?", header["run_id"])
    assert store.reap_stale() == [header["run_id"]]
    running = make_header("rb", started_at=at(9))
    store.start_run(running)

    rows = {r.run_id: r for r in store.run_rows("rb")}
    assert rows[signalled["run_id"]].reaped is False
    assert rows[header["run_id"]].outcome == "interrupted" and rows[header["run_id"]].reaped is True
    assert rows[running["run_id"]].outcome == "running" and rows[running["run_id"]].ended_at is None
