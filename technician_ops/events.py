"""The one event stream of a run.

ansible-runner's events are folded into these, together with the tool's own
step and rollback events; the terminal view, ``--output json``, JUnit and the
audit store all consume the same ``Event`` objects.  The JSON form of an event
is a stable, versioned schema (docs/events.md): add fields, never rename.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypedDict

from technician_ops.outcomes import Outcome as Outcome  # re-exported: the event model's own vocabulary
from technician_ops.state import HostStatus as HostStatus, StepStatus as StepStatus  # re-exported likewise

SCHEMA_VERSION = 1


class Kind(str, enum.Enum):
    """Event kinds.  ``phase`` in step/host events is "run" or "rollback"."""

    RUN_START = "run_start"  # run_id, runbook, path, check, params, operator, origin, started_at
    STEP_START = "step_start"  # step, kind, hosts, phase
    TASK_START = "task_start"  # step, task, phase
    HOST_RESULT = "host_result"  # step, host, status, changed, duration, error, phase
    DIFF = "diff"  # step, host, task, diff (unified text), phase: with --diff, what a task changed in a file
    STEP_END = "step_end"  # step, status, duration, phase, hosts: {host: status}
    APPROVAL = "approval"  # step, approved, by, user
    ROLLBACK_START = "rollback_start"  # steps: [names, in undo order]
    ROLLBACK_END = "rollback_end"  # outcome, failures: [{step, host, error}]
    ARTIFACT = "artifact"  # artifact type (backup, secret_version, terraform_plan, ...) plus its data; never a secret value
    NOTICE = "notice"  # level, message
    RUN_END = "run_end"  # outcome, exit_code, ended_at, duration, failed_step, failed_hosts


# -- the payload of each event kind -------------------------------------------------
# ``Bus.emit(kind, **payload)`` sends these keys; docs/events.md documents them
# and tests/unit/test_events.py checks every event of real runs against them.


class RunStart(TypedDict, total=False):
    run_id: str
    runbook: str
    path: str
    check: bool
    params: dict[str, Any]
    operator: dict[str, Any]
    origin: dict[str, Any]
    started_at: str
    action: str  # rollback / recover of an earlier run only
    rollback_of: str


class StepStart(TypedDict):
    step: str
    kind: str
    hosts: str
    phase: str


class TaskStart(TypedDict):
    step: str
    task: str
    phase: str


class _OnNode(TypedDict, total=False):
    node: str  # the execution node it ran through, or is about (absent: the controller); docs/nodes.md


class HostResult(_OnNode):
    step: str
    host: str
    status: str  # HostStatus
    changed: bool
    changed_unknown: bool  # a result hid whether it changed anything (no_log), or the host was stopped mid-task
    duration: float
    error: str | None
    phase: str
    output: dict[str, Any] | None  # state.Output.to_record(): stdout, stderr, msg, rc, bytes, sha256, truncated
    reason: str | None  # why a skipped host was skipped: "when: COND was false"


class Diff(_OnNode):
    step: str
    host: str
    task: str
    diff: str  # unified diff, as ansible-playbook --diff shows it
    phase: str


class StepEnd(TypedDict):
    step: str
    status: str  # StepStatus
    duration: float
    phase: str
    hosts: dict[str, str]


class Approval(TypedDict):
    step: str
    approved: bool
    by: str
    user: str


class RollbackStart(TypedDict):
    steps: list[str]


class RollbackEnd(TypedDict):
    outcome: str
    failures: list[dict[str, Any]]
    steps: list[str]


class Notice(_OnNode):
    level: str
    message: str


class RunEnd(TypedDict):
    run_id: str
    outcome: str
    exit_code: int
    ended_at: str
    duration: float
    failed_step: str | None
    failed_hosts: list[str]


# ``artifact`` events carry ``type`` plus that artifact's own fields (backup,
# secret_version, terraform_plan, ...), never a secret value: no fixed shape.
PAYLOADS: dict[Kind, type | None] = {
    Kind.RUN_START: RunStart, Kind.STEP_START: StepStart, Kind.TASK_START: TaskStart,
    Kind.HOST_RESULT: HostResult, Kind.DIFF: Diff, Kind.STEP_END: StepEnd, Kind.APPROVAL: Approval,
    Kind.ROLLBACK_START: RollbackStart, Kind.ROLLBACK_END: RollbackEnd, Kind.ARTIFACT: None,
    Kind.NOTICE: Notice, Kind.RUN_END: RunEnd,
}


@dataclass(frozen=True)
class Event:
    kind: Kind
    data: dict[str, Any]
    ts: float = field(default_factory=time.time)

    def to_json(self, run_id: str) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "event": self.kind.value, "run_id": run_id, "ts": round(self.ts, 6), **self.data}


class Sink(Protocol):
    """A consumer of the event stream (console view, JSON printer, audit store)."""

    def handle(self, event: Event) -> None: ...


class Bus:
    """Fans each event out to every sink, in order.  Cheap per event: O(sinks)."""

    def __init__(self, sinks: list[Sink] | None = None, redactor: Any = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])
        self.redactor = redactor  # anything with .obj(data): applied before any sink sees the event
        self._lock = threading.RLock()

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: Kind, /, **data: Any) -> Event:
        if self.redactor:
            data = self.redactor.obj(data)
        event = Event(kind, data)
        # Our plugins emit from the control server's threads while the main
        # thread emits ansible's events: sinks see one event at a time.
        with self._lock:
            for sink in self.sinks:
                sink.handle(event)
        return event


EventCallback = Callable[[Event], None]
