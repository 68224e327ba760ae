"""Fold a run's header and its event rows into the audit record.

The store appends one small row per event (O(1) per event) and only builds
the full record here: at ``finish``, at reap, and for ``show`` of a run that
is still going.  Keeping the fold a pure function of (header, events) means
the same record comes out whichever process finalizes the run.

Record shape (schema 1), beside the header fields:

- ``steps``: {name: {name, kind, targets, phase, status, order, started_at,
  ended_at, duration, hosts: {host: {status, changed, duration, error}}}}.
  ``order`` keeps execution order (canonical JSON sorts keys).
- ``rollback``: None, or {planned: [names in undo order], steps: {...same
  shape...}, outcome, failures, started_at, ended_at}.
- ``approvals``, ``notices``: lists in event order.
- ``artifacts``: {type: [items]} - ``backup``, ``secret_version`` and
  ``terraform_plan`` always present; other types appear when used.
- ``outcome``, ``exit_code``, ``ended_at``, ``duration``, ``failed_step``,
  ``failed_hosts``, ``reason``, ``events`` (how many events were folded).
"""

from __future__ import annotations

import copy
import datetime as _dt
from typing import Any, Iterable

from technician_ops.events import Kind, Outcome
from technician_ops.state import HostState, StepState, StepStatus, host_status, step_status

RECORD_SCHEMA = 1
ARTIFACT_TYPES = ("backup", "secret_version", "terraform_plan")
FINAL_OUTCOMES = frozenset(o.value for o in Outcome if o is not Outcome.RUNNING)


def iso_utc(value: float | _dt.datetime | str | None = None) -> str:
    """One fixed-width UTC timestamp form, so stored times sort as text."""
    if value is None:
        dt = _dt.datetime.now(_dt.timezone.utc)
    elif isinstance(value, (int, float)):
        dt = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    elif isinstance(value, str):
        dt = _parse_iso(value)
    else:
        dt = value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    return dt.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(value: str) -> _dt.datetime:
    # Python 3.10's fromisoformat does not read a trailing "Z".
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return _dt.datetime.fromisoformat(text)


def new_record(header: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "run_id": None,
        "runbook": None,
        "path": None,
        "runbook_sha256": None,
        "git": None,
        "params": {},
        "operator": {},
        "origin": {},
        "check": False,
        "started_at": None,
        "artifact_dir": None,
    }
    record.update(copy.deepcopy(header))
    record.update({
        "ended_at": None,
        "duration": None,
        "outcome": Outcome.RUNNING.value,
        "exit_code": None,
        "reason": None,
        "failed_step": None,
        "failed_hosts": [],
        "approvals": [],
        "steps": {},
        "rollback": None,
        "artifacts": {t: [] for t in ARTIFACT_TYPES},
        "notices": [],
        "events": 0,
    })
    return record


def _ensure_rollback(record: dict[str, Any]) -> dict[str, Any]:
    if record["rollback"] is None:
        record["rollback"] = {"planned": [], "steps": {}, "outcome": None, "failures": [],
                              "started_at": None, "ended_at": None}
    rb: dict[str, Any] = record["rollback"]
    return rb


class _Fold:
    """A record being built; steps are ``state.StepState`` until the record is done."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.record = new_record(header)
        self.steps: dict[str, dict[str, StepState]] = {"run": {}, "rollback": {}}

    def _step(self, data: dict[str, Any], ts: float) -> StepState:
        phase = "rollback" if data.get("phase") == "rollback" else "run"
        if phase == "rollback":
            _ensure_rollback(self.record)
        steps = self.steps[phase]
        name = str(data.get("step"))
        state = steps.get(name)
        if state is None:
            state = steps[name] = StepState(name, data.get("kind"), data.get("hosts"), data.get("phase", "run"),
                                            order=len(steps), started_at=iso_utc(ts))
        return state

    def apply(self, kind: str, data: dict[str, Any], ts: float) -> None:
        """Apply one event.  Unknown kinds are counted, not fatal."""
        record = self.record
        record["events"] += 1
        if kind == Kind.STEP_START.value:
            state = self._step(data, ts)
            state.kind = data.get("kind", state.kind)
            state.targets = data.get("hosts", state.targets)
            state.status = StepStatus.RUNNING
            state.started_at = iso_utc(ts)
        elif kind == Kind.HOST_RESULT.value:
            self._step(data, ts).hosts[str(data.get("host"))] = HostState.from_record(data)
        elif kind == Kind.STEP_END.value:
            state = self._step(data, ts)
            if "status" in data:
                state.status = step_status(data["status"])
            state.duration = data.get("duration")
            state.ended_at = iso_utc(ts)
            for host, status in (data.get("hosts") or {}).items():
                state.host(str(host)).status = host_status(status)
        elif kind == Kind.APPROVAL.value:
            record["approvals"].append({**data, "at": iso_utc(ts)})
        elif kind == Kind.ROLLBACK_START.value:
            rb = _ensure_rollback(record)
            rb["planned"] = list(data.get("steps") or [])
            rb["started_at"] = iso_utc(ts)
        elif kind == Kind.ROLLBACK_END.value:
            rb = _ensure_rollback(record)
            rb["outcome"] = data.get("outcome")
            rb["failures"] = list(data.get("failures") or [])
            rb["ended_at"] = iso_utc(ts)
        elif kind == Kind.ARTIFACT.value:
            item = {k: v for k, v in data.items() if k != "type"}
            item["at"] = iso_utc(ts)
            record["artifacts"].setdefault(str(data.get("type", "other")), []).append(item)
        elif kind == Kind.NOTICE.value:
            record["notices"].append({"level": data.get("level", "info"), "message": data.get("message"),
                                      "at": iso_utc(ts), **({"node": data["node"]} if data.get("node") else {})})
        elif kind == Kind.RUN_END.value:
            for key in ("outcome", "exit_code", "duration", "failed_step"):
                if key in data:
                    record[key] = data[key]
            if "failed_hosts" in data:
                record["failed_hosts"] = list(data["failed_hosts"] or [])
            record["ended_at"] = iso_utc(data["ended_at"]) if data.get("ended_at") else iso_utc(ts)
        # RUN_START and TASK_START add nothing the header and step events lack.

    def done(self) -> dict[str, Any]:
        self.record["steps"] = {n: s.to_record() for n, s in self.steps["run"].items()}
        if self.record["rollback"] is not None:
            self.record["rollback"]["steps"] = {n: s.to_record() for n, s in self.steps["rollback"].items()}
        return self.record


def fold(header: dict[str, Any], events: Iterable[tuple[str, dict[str, Any], float]]) -> dict[str, Any]:
    """Build the record from the header and ``(kind, data, ts)`` events in order."""
    builder = _Fold(header)
    for kind, data, ts in events:
        builder.apply(kind, data, ts)
    return builder.done()


def finalize(record: dict[str, Any], outcome: str, ended_at: str | None, reason: str | None) -> dict[str, Any]:
    """Set the final outcome and times.  The caller's outcome wins over RUN_END's."""
    record["outcome"] = outcome
    if ended_at is not None:
        record["ended_at"] = iso_utc(ended_at)
    elif record["ended_at"] is None:
        record["ended_at"] = iso_utc()
    if reason is not None:
        record["reason"] = reason
    if record.get("duration") is None and record.get("started_at"):
        try:
            delta = _parse_iso(record["ended_at"]) - _parse_iso(record["started_at"])
            record["duration"] = round(max(delta.total_seconds(), 0.0), 6)
        except ValueError:
            pass
    return record
