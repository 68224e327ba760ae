"""How a run ended: its own module so the CLI can offer the outcomes without importing the event model."""

from __future__ import annotations

import enum


class Outcome(str, enum.Enum):
    """How a run ended.  The audit record and exit code derive from it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed, nothing had changed
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"  # lock held: nothing ran
    REFUSED = "refused"  # invalid input or approval missing: nothing ran
    AWAITING_APPROVAL = "awaiting_approval"  # started unattended (an alert) with an approve step: held, nothing ran;
    # its request is saved in the record and ``approve RUN_ID`` releases it as a new run
