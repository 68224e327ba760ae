"""One exception root for everything technician-ops reports to a user.

Library code raises these; only the CLI turns them into a message and an exit
code (``cli.main``).  Every subclass carries the exit code it maps to, so the
code table in the README cannot drift from the behaviour: it is generated from
``ExitCode`` and tested against it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class ExitCode(enum.IntEnum):
    """Process exit codes, following sysexits(3) where one fits."""

    OK = 0
    FAILED = 1  # a step failed and nothing had changed anywhere
    ROLLED_BACK = 3  # a step failed; what may have changed was undone
    ROLLBACK_FAILED = 4  # an undo failed: a human is needed
    APPROVAL_MISSING = 5  # an approve step had no approval
    USAGE = 64  # EX_USAGE: bad command line
    DATAERR = 65  # EX_DATAERR: invalid runbook, parameters, or a tampered audit log
    SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug)
    TEMPFAIL = 75  # EX_TEMPFAIL: lock held or a dependency down; retry later
    CONFIG = 78  # EX_CONFIG: bad configuration
    INTERRUPTED = 130  # killed by SIGINT/SIGTERM while running

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success (or, for --check, the dry run passed)",
    ExitCode.FAILED: "a step failed; nothing had changed anywhere, so nothing was undone",
    ExitCode.ROLLED_BACK: "a step failed (or the runbook's timeout ran out); what the run may have changed was undone",
    ExitCode.ROLLBACK_FAILED: "a step failed and an undo failed too: a human is needed",
    ExitCode.APPROVAL_MISSING: "an approve step was not approved (no terminal, no --yes/--approve)",
    ExitCode.USAGE: "bad command line",
    ExitCode.DATAERR: "invalid runbook or parameters (nothing ran), or audit verify found tampering",
    ExitCode.SOFTWARE: "internal error: a bug in technician-ops (see the debug log)",
    ExitCode.TEMPFAIL: "temporary failure, retry later: lock held, or a dependency (host, Vault) down; what changed was undone",
    ExitCode.CONFIG: "bad configuration",
    ExitCode.INTERRUPTED: "interrupted by a signal: the execution was stopped and what it may have changed undone; the record says what ran",
}


class TechnicianOpsError(Exception):
    """Root of every error technician-ops reports.  ``str(err)`` is the message."""

    exit_code: ExitCode = ExitCode.SOFTWARE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(TechnicianOpsError):
    exit_code = ExitCode.USAGE


class ConfigError(TechnicianOpsError):
    exit_code = ExitCode.CONFIG


class NotFound(TechnicianOpsError):
    """A runbook, run id or file that the user named does not exist."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a runbook, anchored at ``path:line``."""

    path: Path | str
    line: int
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.path}:{self.line}: {prefix}{self.message}"


class RunbookError(TechnicianOpsError):
    """A runbook is invalid.  Carries every diagnostic found, not just the first."""

    exit_code = ExitCode.DATAERR

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class ParameterError(TechnicianOpsError):
    """A run parameter is missing, unknown, or has a bad value."""

    exit_code = ExitCode.DATAERR


class ApprovalMissing(TechnicianOpsError):
    exit_code = ExitCode.APPROVAL_MISSING


class LockHeld(TechnicianOpsError):
    exit_code = ExitCode.TEMPFAIL


class DependencyUnavailable(TechnicianOpsError):
    """Something the run needs (a host, Vault, PostgreSQL) is down: retry later."""

    exit_code = ExitCode.TEMPFAIL


class ExecutionError(TechnicianOpsError):
    """ansible-runner could not be started or died unexpectedly."""

    exit_code = ExitCode.SOFTWARE


class AuditError(TechnicianOpsError):
    """The audit store cannot be opened or written."""

    exit_code = ExitCode.CONFIG


class AuditTampered(TechnicianOpsError):
    exit_code = ExitCode.DATAERR


class PastRunError(TechnicianOpsError):
    """The named earlier run cannot be undone as asked; nothing was changed."""

    exit_code = ExitCode.DATAERR


class ScheduleError(TechnicianOpsError):
    """A schedule cannot be exported (required parameters, an unconvertible expression)."""

    exit_code = ExitCode.DATAERR


class StorageError(TechnicianOpsError):
    """A file technician-ops must write cannot be: the disk is full (75, retry later) or it is not
    writable (78, fix the configuration)."""

    exit_code = ExitCode.CONFIG

    @classmethod
    def from_os(cls, exc: OSError, doing: str) -> StorageError:
        import errno

        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        error = cls(f"cannot {doing}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""),
                    hint="free space on the state dir's disk and retry" if full else "check the state dir's permissions")
        error.exit_code = ExitCode.TEMPFAIL if full else ExitCode.CONFIG
        return error


class AuditUnavailable(AuditError):
    """The audit store does not answer (PostgreSQL down or unreachable): nothing ran; retry later."""

    exit_code = ExitCode.TEMPFAIL
