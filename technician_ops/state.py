"""The state of a step, per host: one model for the live run and the record.

The engine's ``StepTracker`` builds it from ansible-runner's events while a
run goes; the audit fold rebuilds it from the tool's own ``host_result`` and
``step_end`` events; the saga (a failing run's rollback, ``rollback RUN_ID``,
``recover RUN_ID``) reads it to decide what to undo.  Keeping the merge rules
here means the record always says what the engine saw.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class StepStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class HostStatus(str, enum.Enum):
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"  # a task was in flight when the execution was stopped: it may have done anything


# A host's status over several tasks is the worst one seen.
_RANK = {HostStatus.SKIPPED: 0, HostStatus.OK: 1, HostStatus.CHANGED: 2, HostStatus.UNKNOWN: 3,
         HostStatus.FAILED: 4, HostStatus.UNREACHABLE: 5}
DONE = frozenset({HostStatus.OK, HostStatus.CHANGED})
BROKEN = frozenset({HostStatus.FAILED, HostStatus.UNREACHABLE, HostStatus.UNKNOWN})


@dataclass
class HostState:
    """One host's part of one step."""

    status: HostStatus = HostStatus.SKIPPED
    changed: bool = False
    duration: float | None = None
    error: str | None = None
    ignored_errors: int = 0
    changed_unknown: bool = False  # a result hid whether it changed anything (no_log), or none came (stopped)
    output: dict[str, Any] | None = None  # what its tasks printed (``Output.to_record``), if anything
    reason: str | None = None  # why it was skipped there (a when= that was false)
    node: str | None = None  # the execution node it ran through (None: the controller)

    @property
    def may_have_changed(self) -> bool:
        """Whether an undo must run here: a task changed something, or nobody can tell."""
        return self.changed or self.changed_unknown or self.status is HostStatus.UNKNOWN

    def merge(self, status: HostStatus, *, changed: bool | None = False, duration: float = 0.0,
              error: str | None = None, ignored: bool = False) -> None:
        """Add one task result: the worst status wins, ``changed`` sticks, durations add up.

        ``changed=None``: the result does not say (a no_log result that hides it).
        """
        self.duration = (self.duration or 0.0) + duration
        if changed is None:
            self.changed_unknown = True
        elif changed or status is HostStatus.CHANGED:  # an ignored failure may have changed things too
            self.changed = True
        if ignored:  # ignore_errors / a rescued failure: counted, not the host's status
            self.ignored_errors += 1
            self.error = self.error or error
            return
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        if status in BROKEN and self.error is None:
            self.error = error

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value, "changed": self.changed, "duration": self.duration,
                               "error": self.error}
        if self.changed_unknown:
            out["changed_unknown"] = True
        if self.output:
            out["output"] = self.output
        if self.reason:
            out["reason"] = self.reason
        if self.node:
            out["node"] = self.node
        return out

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> HostState:
        output = data.get("output")
        return cls(host_status(data.get("status")), bool(data.get("changed", False)), data.get("duration"),
                   data.get("error"), changed_unknown=bool(data.get("changed_unknown", False)),
                   output=output if isinstance(output, dict) else None, reason=data.get("reason"),
                   node=data.get("node") if isinstance(data.get("node"), str) else None)


OUTPUT_CAP = 64 * 1024  # characters of each stream kept per step and host: the head and the tail


class _Stream:
    """One stream's kept text: the head, the tail, and how much came after the head."""

    __slots__ = ("head", "tail", "after")

    def __init__(self) -> None:
        self.head, self.tail, self.after = "", "", 0

    def add(self, text: str, half: int) -> None:
        if len(self.head) < half:
            room = half - len(self.head)
            self.head, text = self.head + text[:room], text[room:]
        if text:
            self.tail = (self.tail + text)[-half:]
            self.after += len(text)

    @property
    def cut(self) -> int:
        return self.after - len(self.tail)

    def text(self) -> str:
        return self.head + (f"\n[... {self.cut} characters cut ...]\n" if self.cut else "") + self.tail


class Output:
    """What one host printed in one step (stdout, stderr of each task; a debug's or failure's ``msg``).

    Bounded whatever the host prints: the first and last ``OUTPUT_CAP / 2`` characters of each stream
    are kept, with a marker where text was cut; ``bytes`` and ``sha256`` are those of the whole text
    (stdout then stderr, as they came, UTF-8), so a cut record still says what it cut.  Text arrives
    redacted.
    """

    __slots__ = ("_streams", "msg", "rc", "_size", "_digest")

    def __init__(self) -> None:
        self._streams = {"stdout": _Stream(), "stderr": _Stream()}
        self.msg: str | None = None
        self.rc: int | None = None
        self._size = 0
        self._digest: Any = None

    def add(self, stream: str, text: str) -> None:
        if not text:
            return
        kept = self._streams[stream]
        text = clean_text(text)
        if kept.head:  # a later task's text starts on a line of its own
            text = "\n" + text
        data = text.encode("utf-8")
        self._size += len(data)
        if self._digest is None:
            from hashlib import sha256  # OpenSSL's module: paid by a run's first output, not by lint or --help

            self._digest = sha256()
        self._digest.update(data)
        kept.add(text, OUTPUT_CAP // 2)

    @property
    def truncated(self) -> bool:
        return any(s.cut for s in self._streams.values())

    def __bool__(self) -> bool:
        return self._size > 0 or self.msg is not None or self.rc is not None

    def to_record(self) -> dict[str, Any]:
        return {"stdout": self._streams["stdout"].text(), "stderr": self._streams["stderr"].text(), "msg": self.msg,
                "rc": self.rc, "bytes": self._size,
                "sha256": self._digest.hexdigest() if self._digest is not None else None, "truncated": self.truncated}


# Never reaches a terminal from a value (a host's output, a task name, a node's words): every C0 control but tab
# and newline (ESC would let a host's output move the cursor or rewrite the operator's screen), DEL, C1.
CONTROL = {c: None for c in (*range(0, 9), *range(11, 32), 127, *range(0x80, 0xA0))}


def printable(text: Any) -> str:
    return str(text).translate(CONTROL)


def clean_text(text: str) -> str:
    """``text`` safe to store and print anywhere: no lone surrogates (undecodable bytes), no NUL."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


@dataclass
class StepState:
    """One step (or one undo) of one execution: its status and every host's."""

    name: str
    kind: str | None = None
    targets: str | None = None
    phase: str = "run"
    status: StepStatus = StepStatus.RUNNING
    order: int = 0
    hosts: dict[str, HostState] = field(default_factory=dict)
    duration: float | None = None
    started_at: str | None = None
    ended_at: str | None = None

    def host(self, name: str) -> HostState:
        state = self.hosts.get(name)
        if state is None:
            state = self.hosts[name] = HostState()
        return state

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, a in self.hosts.items() if a.status in BROKEN]

    @property
    def done_hosts(self) -> list[str]:
        """Hosts where every task came back ok or changed."""
        return [h for h, a in self.hosts.items() if a.status in DONE]

    @property
    def changed(self) -> bool:
        return any(a.changed for a in self.hosts.values())

    @property
    def changed_hosts(self) -> list[str]:
        """Hosts where this step may have changed something (``HostState.may_have_changed``)."""
        return [h for h, a in self.hosts.items() if a.may_have_changed]

    def close(self, *, aborted: bool = False) -> None:
        """The step's own status from its hosts'; an undo with a rescued failure failed too; a step that ran
        on no host was skipped."""
        failed = bool(self.failed_hosts) or aborted
        if self.phase == "rollback" and any(a.ignored_errors for a in self.hosts.values()):
            failed = True
        # No host at all: every task was filtered out (--tags, --limit) or its hosts matched nothing.
        self.status = StepStatus.FAILED if failed else StepStatus.SUCCEEDED if self.hosts else StepStatus.SKIPPED

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "targets": self.targets, "phase": self.phase,
                "status": self.status.value, "order": self.order, "started_at": self.started_at,
                "ended_at": self.ended_at, "duration": self.duration,
                "hosts": {h: a.to_record() for h, a in self.hosts.items()}}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> StepState:
        return cls(str(data.get("name")), data.get("kind"), data.get("targets"), data.get("phase") or "run",
                   step_status(data.get("status")), int(data.get("order") or 0),
                   {str(h): HostState.from_record(a) for h, a in (data.get("hosts") or {}).items()},
                   data.get("duration"), data.get("started_at"), data.get("ended_at"))


def host_status(value: Any) -> HostStatus:
    try:
        return HostStatus(value)
    except ValueError:
        return HostStatus.SKIPPED


def step_status(value: Any) -> StepStatus:
    try:
        return StepStatus(value)
    except ValueError:
        return StepStatus.RUNNING
