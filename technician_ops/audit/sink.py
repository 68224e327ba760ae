"""Connects the event stream to the audit store: one ``append`` per event."""

from __future__ import annotations

from technician_ops.events import Event

from .store import AuditStore


class AuditSink:
    """An ``events.Sink`` that records every event of one run.

    Errors are not swallowed: a run that cannot be audited should stop, and
    the engine decides how (it still owns ``finish``).
    """

    def __init__(self, store: AuditStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    def handle(self, event: Event) -> None:
        self.store.append(self.run_id, event)
