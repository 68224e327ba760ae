"""Small builders shared by the audit tests."""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

from technician_ops.audit import AuditStore, new_run_id
from technician_ops.events import Event, Kind


def make_header(runbook: str = "db-failover", *, started_at: str | None = None, check: bool = False,
                user: str = "alice", origin: str = "terminal", **extra: Any) -> dict[str, Any]:
    return {
        "run_id": new_run_id(),
        "runbook": runbook,
        "path": f"runbooks/{runbook}.md",
        "runbook_sha256": "ab" * 32,
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "params": {"primary": "db1", "standby": "db2", "replication_password": "***"},
        "operator": {"user": user, "host": socket.gethostname(), "pid": os.getpid()},
        "origin": {"type": origin, "system": "github" if origin == "ci" else None,
                   "run_id": "42" if origin == "ci" else None,
                   "url": "https://ci.invalid/run/42" if origin == "ci" else None},
        "check": check,
        "started_at": started_at or dt.datetime.now(dt.timezone.utc).isoformat(),
        "artifact_dir": "/tmp/artifacts/x",
        **extra,
    }


def ev(event_kind: Kind, **data: Any) -> Event:
    return Event(event_kind, data)


def step(store: AuditStore, run_id: str, name: str, hosts: dict[str, tuple[str, bool, str | None]],
         status: str = "succeeded", phase: str = "run", kind: str = "ansible") -> None:
    """Emit STEP_START, one HOST_RESULT per host, STEP_END - as the engine does."""
    store.append(run_id, ev(Kind.STEP_START, step=name, kind=kind, hosts=list(hosts), phase=phase))
    for host, (hstatus, changed, error) in hosts.items():
        store.append(run_id, ev(Kind.HOST_RESULT, step=name, host=host, status=hstatus, changed=changed,
                                duration=0.25, error=error, phase=phase))
    store.append(run_id, ev(Kind.STEP_END, step=name, status=status, duration=0.5, phase=phase,
                            hosts={h: v[0] for h, v in hosts.items()}))


def finished_run(store: AuditStore, runbook: str = "db-failover", outcome: str = "succeeded",
                 **header_kw: Any) -> dict[str, Any]:
    header = make_header(runbook, **header_kw)
    store.start_run(header)
    step(store, header["run_id"], "promote", {"db2": ("changed", True, None)})
    return store.finish(header["run_id"], outcome)
