"""Connects the event stream to the audit store, off the emitting thread.

ansible-runner's events are emitted on the thread that reads
ansible-playbook's pty.  A durable write per event (one fsync, 2-4 ms) on that
thread stalled ansible-playbook once the pty buffer filled: ~0.6 s of a
50-host run (issue 9).  So ``AuditSink.handle`` only queues the event, and a
writer thread commits everything queued so far in one transaction
(``AuditStore.append_many``): group commit.

``RunRecording`` is the audit side of one run (``start_run``, the sink,
``finish``) so that the sink is always drained before the record is folded
and chained, on every path out of the run.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from technician_ops.errors import AuditError
from technician_ops.events import Bus, Event, Outcome

if TYPE_CHECKING:
    from technician_ops.audit.store import AuditStore


class AuditSink:
    """An ``events.Sink`` that records every event of one run, in order, with group commit.

    ``handle`` appends the event to an in-memory queue (no I/O) and wakes one
    writer thread, started on the first event.  The writer takes everything
    queued so far and writes it with one ``append_many``: one transaction, one
    commit, one fsync.  When the run is quiet a group is a single event,
    committed one fsync after it was emitted; when events come faster than
    fsyncs, they queue up behind the commit in progress and the next group
    holds all of them.  The emitting thread never waits for the disk.

    Durability, precisely: every event in a committed group survives any
    crash (SQLite WAL with synchronous=FULL; PostgreSQL's commit).  A process
    killed outright (SIGKILL, power loss) loses the events emitted since the
    start of the last commit: the group being committed, if its commit had
    not completed, and the events queued behind it - in practice the last
    few milliseconds of events, at most what arrived during one or two
    fsyncs.  The synchronous sink lost at most the one event being written.
    The record itself is still finalized by the next ``open_store`` as
    ``interrupted``, with everything that was committed.  ``flush`` or
    ``close`` make everything emitted so far durable before returning.

    Errors are not swallowed: a run that cannot be audited must stop.  When
    the store refuses a group (disk full, database gone, an event it cannot
    store), the group is written again one event per transaction, so every
    event before the one that fails is kept, as with one transaction per
    event.  That error is kept; the next ``handle``, ``flush`` and ``close``
    raise it as an ``AuditError``, and nothing after it is written (a record
    with a hole in the middle would be worse than one that stops).  The engine decides how the
    run stops; it still owns ``finish`` (see ``RunRecording``).
    """

    def __init__(self, store: AuditStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[Event] = []
        self._queued = 0  # events ever handed to handle()
        self._written = 0  # events committed
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- the emitting side ------------------------------------------------------------
    def handle(self, event: Event) -> None:
        """Queue one event for the writer; raise the writer's error if it has failed."""
        with self._cond:
            self._raise_if_failed()
            if self._closed:
                raise AuditError(f"the audit sink of run {self.run_id} is closed: an event emitted after the "
                                 "record was finished cannot be recorded")
            self._queue.append(event)
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name=f"audit-writer-{self.run_id[:8]}",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Return once every event handled so far is committed (or raise the writer's error)."""
        with self._cond:
            target = self._queued
            while self._written < target and self._error is None:
                self._cond.wait()
            self._raise_if_failed()

    def close(self) -> None:
        """Commit everything queued, stop the writer and wait for it; raise its error, if any.

        Idempotent.  After ``close``, ``handle`` refuses events.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            self._raise_if_failed()

    def __enter__(self) -> AuditSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        # A new exception each time (the writer's own is its cause): raising one
        # instance from several places would splice their tracebacks together.
        if self._error is not None:
            message = self._error.message if isinstance(self._error, AuditError) else str(self._error)
            raise AuditError(f"recording run {self.run_id} failed, so the run cannot go on: {message}",
                             hint="the audit store must be writable for a run to proceed; "
                                  "events committed before the failure are kept") from self._error

    # --- the writer thread ------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed and drained
                    return
                group, self._queue = self._queue, []
            try:
                self._write(group)
            except BaseException as exc:  # kept for the emitting side; nothing more is written
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._cond.notify_all()
                return

    def _write(self, group: list[Event]) -> None:
        try:
            self.store.append_many(self.run_id, group)
        except AuditError:
            if len(group) == 1:
                raise
            # The group was rolled back whole.  Write it again event by event, so
            # the events before the one that fails are kept, as they were when
            # each event was its own transaction.  A store that is down fails
            # again at once, on the first event.
            for event in group:
                self.store.append(self.run_id, event)
                self._committed(1)
            return
        self._committed(len(group))

    def _committed(self, count: int) -> None:
        with self._cond:
            self._written += count
            self._cond.notify_all()


class RunRecording:
    """The audit side of one run: ``start_run``, an ``AuditSink`` on the bus, ``finish``.

    Used as a context manager around the execution, so the order that keeps
    the record whole (drain the sink, then fold and chain) is in one place:
    ``finish(outcome)`` at the normal end; leaving the block without it (an
    exception, Ctrl-C twice, a bug) drains what it can and finishes the
    record as ``interrupted``, so it does not stay ``running``.  With
    ``store=None`` (no audit store) every method does nothing.
    """

    def __init__(self, store: AuditStore | None, header: dict[str, Any], bus: Bus) -> None:
        self.store = store
        self.header = header
        self.run_id = str(header["run_id"])
        self.bus = bus
        self.sink: AuditSink | None = None
        self.record: dict[str, Any] | None = None

    def __enter__(self) -> RunRecording:
        if self.store is not None:
            self.store.start_run(self.header)
            self.sink = AuditSink(self.store, self.run_id)
            self.bus.add(self.sink)
        return self

    def finish(self, outcome: str) -> dict[str, Any] | None:
        """Drain the sink, then fold and chain the record; return it (None without a store)."""
        if self.store is None:
            return None
        if self.sink is not None:
            # Every event emitted so far is committed before the fold reads them.  If
            # the writer failed, this raises and __exit__ records "interrupted".
            self.sink.close()
        self.record = self.store.finish(self.run_id, outcome)
        return self.record

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.store is None or self.record is not None:
            return
        # The run did not reach finish(): record it as interrupted, with what was emitted.
        if self.sink is not None:
            try:
                self.sink.close()
            except AuditError as sink_error:
                if exc is None:
                    self.store.finish(self.run_id, Outcome.INTERRUPTED.value)
                    raise
                if not isinstance(exc, AuditError):  # an audit error is already on its way up
                    exc.add_note(f"also, the audit record lost events: {sink_error.message}")
        self.record = self.store.finish(self.run_id, Outcome.INTERRUPTED.value)
