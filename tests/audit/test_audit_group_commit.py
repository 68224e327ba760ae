"""Group commit: ``append_many`` and the asynchronous ``AuditSink``, on both backends."""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import pytest

from technician_ops.audit import AuditStore, open_store
from technician_ops.audit.sink import AuditSink, RunRecording
from technician_ops.errors import AuditError
from technician_ops.events import Bus, Event, Kind

from tests.audit.conftest import Backend
from tests.audit.helpers import ev, make_header

# A lone surrogate cannot be encoded as UTF-8: neither database driver can send
# this event, so its INSERT fails - after the events before it in the group.
UNWRITABLE = "\ud800"


def _started(store: AuditStore) -> str:
    header = make_header()
    store.start_run(header)
    return str(header["run_id"])


def _notice(i: int, **extra: Any) -> Event:
    return ev(Kind.NOTICE, level="info", message=f"m{i}", **extra)


def _stored(backend: Backend, run_id: str) -> list[tuple[int, str]]:
    """(n, message) of the run's events as the database has them, through another connection."""
    rows = backend.raw("SELECT n, data FROM events WHERE run_id = ? ORDER BY n", run_id)
    import json

    return [(int(n), json.loads(data).get("message", "")) for n, data in rows]


# --- append_many ---------------------------------------------------------------------------

def test_append_many_numbers_events_like_consecutive_appends(backend: Backend, store: AuditStore) -> None:
    one_by_one, grouped = _started(store), _started(store)
    for rid in (one_by_one, grouped):
        store.append(rid, _notice(0))  # the store now expects n=1 next
        # Another writer takes n=2 behind our back: the event that finds it taken re-reads MAX(n).
        backend.raw("INSERT INTO events (run_id, n, kind, ts, data) VALUES (?, 2, 'notice', 0, '{}')", rid)
    for i in (1, 2, 3):
        store.append(one_by_one, _notice(i))
    store.append_many(grouped, [_notice(1), _notice(2), _notice(3)])

    expected = [(0, "m0"), (1, "m1"), (2, ""), (3, "m2"), (4, "m3")]
    assert _stored(backend, one_by_one) == expected
    assert _stored(backend, grouped) == expected
    store.append_many(grouped, [_notice(4)])
    store.append(one_by_one, _notice(4))
    assert _stored(backend, grouped)[-1] == _stored(backend, one_by_one)[-1] == (5, "m4")


def test_append_many_of_nothing_writes_nothing(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    store.append_many(rid, [])
    assert _stored(backend, rid) == []


def test_append_many_is_all_or_nothing(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    store.append(rid, _notice(0))
    with pytest.raises(AuditError, match=f"cannot append 3 events to run {rid}"):
        store.append_many(rid, [_notice(1), _notice(2, detail=UNWRITABLE), _notice(3)])
    assert _stored(backend, rid) == [(0, "m0")]  # m1 was inserted, then rolled back with the rest
    store.append_many(rid, [_notice(4), _notice(5)])  # the store is still usable and numbers on
    assert _stored(backend, rid) == [(0, "m0"), (1, "m4"), (2, "m5")]
    assert store.finish(rid, "succeeded")["events"] == 3


def test_append_many_refuses_a_finished_run(store: AuditStore) -> None:
    rid = _started(store)
    store.finish(rid, "succeeded")
    with pytest.raises(AuditError, match="already finished"):
        store.append_many(rid, [_notice(0)])


def test_append_many_commits_once_on_sqlite(tmp_path: pathlib.Path) -> None:
    store = open_store(None, tmp_path)
    try:
        rid = _started(store)
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        store.append_many(rid, [_notice(i) for i in range(50)])
        store._conn.set_trace_callback(None)  # type: ignore[attr-defined]
        assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert sum(s.startswith("INSERT INTO events") for s in statements) == 50
    finally:
        store.close()


# --- AuditSink ---------------------------------------------------------------------------

class _Recorder:
    """A second sink on the bus: the order in which the bus handed events out."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def handle(self, event: Event) -> None:
        self.messages.append(event.data["message"])


def test_sink_keeps_bus_order_under_concurrent_emitters(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    recorder = _Recorder()
    with AuditSink(store, rid) as sink:
        bus = Bus([sink, recorder])

        def emit(thread: int) -> None:
            for i in range(100):
                bus.emit(Kind.NOTICE, level="info", message=f"t{thread}-{i}")

        threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stored = _stored(backend, rid)
    assert [n for n, _ in stored] == list(range(400))
    assert [m for _, m in stored] == recorder.messages
    for thread in range(4):
        mine = [m for _, m in stored if m.startswith(f"t{thread}-")]
        assert mine == [f"t{thread}-{i}" for i in range(100)]


def test_sink_commits_what_queued_behind_a_commit_as_one_group(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    groups: list[int] = []
    real = store.append_many

    def counting(run_id: str, events: Any) -> None:
        groups.append(len(events))
        real(run_id, events)

    store.append_many = counting  # type: ignore[method-assign]
    sink = AuditSink(store, rid)
    with store._lock:  # hold the store as a slow fsync would: the writer blocks in its first group
        for i in range(200):
            sink.handle(_notice(i))
    sink.close()
    assert sum(groups) == 200
    assert len(groups) <= 2, groups  # the first group, then everything that queued behind it
    assert [m for _, m in _stored(backend, rid)] == [f"m{i}" for i in range(200)]


def test_close_drains_everything_and_then_refuses_events(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    sink = AuditSink(store, rid)
    for i in range(300):
        sink.handle(_notice(i))
    sink.close()
    assert len(_stored(backend, rid)) == 300
    sink.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        sink.handle(_notice(300))
    assert store.finish(rid, "succeeded")["events"] == 300


def test_flush_makes_every_handled_event_visible_to_other_connections(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    sink = AuditSink(store, rid)
    try:
        for i in range(20):
            sink.handle(_notice(i))
            if i % 7 == 0:
                sink.flush()
                assert len(_stored(backend, rid)) == i + 1
        sink.flush()
        assert [m for _, m in _stored(backend, rid)] == [f"m{i}" for i in range(20)]
    finally:
        sink.close()


def test_close_without_events_starts_no_thread(store: AuditStore) -> None:
    sink = AuditSink(store, _started(store))
    sink.close()
    assert sink._thread is None


def test_writer_error_is_raised_by_the_next_handle_and_by_close(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    sink = AuditSink(store, rid)
    sink.handle(_notice(0))
    sink.flush()
    sink.handle(_notice(1, detail=UNWRITABLE))
    with pytest.raises(AuditError, match=f"recording run {rid} failed") as flushed:
        sink.flush()
    assert isinstance(flushed.value.__cause__, AuditError)
    for _ in range(2):  # not lost after being raised once
        with pytest.raises(AuditError, match=f"recording run {rid} failed"):
            sink.handle(_notice(2))
    with pytest.raises(AuditError, match=f"recording run {rid} failed"):
        sink.close()
    assert _stored(backend, rid) == [(0, "m0")]


def test_a_failed_group_keeps_the_events_before_the_failing_one(backend: Backend, store: AuditStore) -> None:
    rid = _started(store)
    sink = AuditSink(store, rid)
    with store._lock:  # the writer blocks in its first group, [m0] ...
        sink.handle(_notice(0))
        deadline = time.monotonic() + 10
        while sink._queue and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not sink._queue
        for event in (_notice(1), _notice(2, detail=UNWRITABLE), _notice(3)):  # ... so these are the next group
            sink.handle(event)
    with pytest.raises(AuditError, match=f"recording run {rid} failed"):
        sink.close()
    assert _stored(backend, rid) == [(0, "m0"), (1, "m1")]  # as if each event were its own transaction


def test_writer_error_is_raised_by_close_when_nothing_else_saw_it(store: AuditStore) -> None:
    sink = AuditSink(store, "0190aaaa-0000-7000-8000-000000000000")  # never started: no such run
    sink.handle(_notice(0))
    with pytest.raises(AuditError, match="no such run"):
        sink.close()


# --- RunRecording: the order of drain and finish ----------------------------------------

def test_recording_drains_the_sink_before_finishing(store: AuditStore) -> None:
    header = make_header()
    bus = Bus()
    with RunRecording(store, header, bus) as recording:
        for i in range(200):
            bus.emit(Kind.NOTICE, level="info", message=f"m{i}")
        record = recording.finish("succeeded")
    assert record is not None and record["events"] == 200 and record["outcome"] == "succeeded"
    assert store.get(header["run_id"])["notices"][-1]["message"] == "m199"


def test_recording_left_by_an_exception_is_interrupted_with_every_event(store: AuditStore) -> None:
    header = make_header()
    bus = Bus()
    with pytest.raises(KeyboardInterrupt):
        with RunRecording(store, header, bus):
            for i in range(200):
                bus.emit(Kind.NOTICE, level="info", message=f"m{i}")
            raise KeyboardInterrupt
    record = store.get(header["run_id"])
    assert record["outcome"] == "interrupted" and record["events"] == 200 and record["seq"] == 1


def test_recording_whose_writer_failed_ends_interrupted(backend: Backend, store: AuditStore) -> None:
    header = make_header()
    bus = Bus()
    with pytest.raises(AuditError, match="recording run"):
        with RunRecording(store, header, bus) as recording:
            bus.emit(Kind.NOTICE, level="info", message="m0")
            bus.emit(Kind.NOTICE, level="info", message="bad", detail=UNWRITABLE)
            recording.sink.flush()  # type: ignore[union-attr]  # the run would find out at its next event
    record = store.get(header["run_id"])
    assert record["outcome"] == "interrupted" and record["events"] == 1
    assert store.verify().ok


def test_recording_with_a_failure_at_finish_still_ends_interrupted(store: AuditStore) -> None:
    header = make_header()
    bus = Bus()
    with pytest.raises(AuditError, match="recording run"):
        with RunRecording(store, header, bus) as recording:
            bus.emit(Kind.NOTICE, level="info", message="bad", detail=UNWRITABLE)
            recording.finish("succeeded")  # must not claim success over a record that lost events
    assert store.get(header["run_id"])["outcome"] == "interrupted"


def test_recording_without_a_store_does_nothing() -> None:
    bus = Bus()
    with RunRecording(None, make_header(), bus) as recording:
        bus.emit(Kind.NOTICE, level="info", message="m0")
        assert recording.finish("succeeded") is None
    assert bus.sinks == []


def test_recording_left_by_another_error_keeps_it_and_notes_the_lost_events(store: AuditStore) -> None:
    header = make_header()
    bus = Bus()
    with pytest.raises(RuntimeError, match="engine bug") as raised:
        with RunRecording(store, header, bus):
            bus.emit(Kind.NOTICE, level="info", message="bad", detail=UNWRITABLE)
            raise RuntimeError("engine bug")
    assert any("audit record lost events" in note for note in raised.value.__notes__)
    assert store.get(header["run_id"])["outcome"] == "interrupted"
