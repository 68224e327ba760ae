"""The engine's contract: a request in, a result out, and the exit code each outcome means."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from technician_ops.errors import ExitCode
from technician_ops.outcomes import Outcome

Prompt = Callable[[str, str], bool]  # (step name or action, text) -> approved / confirmed?
Cancelled = Callable[[], bool]  # True once the operator asked the run to stop

EXIT_FOR_OUTCOME = {
    Outcome.SUCCEEDED: ExitCode.OK,
    Outcome.FAILED: ExitCode.FAILED,
    Outcome.ROLLED_BACK: ExitCode.ROLLED_BACK,
    Outcome.ROLLBACK_FAILED: ExitCode.ROLLBACK_FAILED,
    Outcome.INTERRUPTED: ExitCode.INTERRUPTED,
    Outcome.SKIPPED: ExitCode.TEMPFAIL,
    Outcome.AWAITING_APPROVAL: ExitCode.APPROVAL_MISSING,
}


@dataclass
class RunRequest:
    """``run NAME``: which runbook, with what, how interactive."""

    runbook: str
    params: dict[str, str] = field(default_factory=dict)
    check: bool = False
    yes: bool = False
    approve: tuple[str, ...] = ()
    strict: bool = False
    prompt: Prompt | None = None  # None: not interactive
    wait_lock: float = 0.0
    skip_preflight: bool = False
    run_id: str | None = None
    environ: dict[str, str] | None = None
    accelerate: bool | None = None  # mitogen strategy; None: TECHNICIAN_OPS_ACCELERATE decides
    # ansible-playbook's own options (plan/options.py): -e items as typed, --limit, --tags/--skip-tags, --diff
    extra_vars: tuple[str, ...] = ()
    limit: str | None = None
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    diff: bool = False
    hosts: str | None = None  # host pattern for a Markdown file that names none (a Runme README)
    # ``approve RUN_ID``: every approve step is approved by this user, and the record names the held run
    approver: str | None = None
    releases: str | None = None


@dataclass
class UndoRequest:
    """``rollback RUN_ID`` / ``recover RUN_ID``: undo an earlier run, as a run of its own."""

    action: str  # "rollback" or "recover"
    run_id: str  # the earlier run (a unique prefix is enough)
    yes: bool = False
    prompt: Prompt | None = None
    skip_preflight: bool = False
    new_run_id: str | None = None  # the undo's own run id (default: a fresh UUIDv7)


@dataclass
class RunResult:
    run_id: str
    outcome: Outcome
    exit_code: ExitCode
    failed_step: str | None
    steps: dict[str, str]  # step -> status (run phase)
    rollback: dict[str, Any]
    artifact_dir: Path | None
    duration: float


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
