"""The CI/cron outputs of one run: JUnit XML, Prometheus metrics, a failure notification.

Each is a sink of the run's event bus plus a ``finish`` once the run has
ended (or was refused).  None of them may change a run's outcome: their own
failures come back as warnings for the caller to show.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from technician_ops.errors import ExitCode, TechnicianOpsError
from technician_ops.events import Event, Kind
from technician_ops.fsutil import regular_file_or_absent


class Reports:
    def __init__(self, runbook_name: str, step_names: list[str] | None, *, junit: str | None = None,
                 metrics: str | None = None, notify_url: str | None = None, check: bool = False) -> None:
        self.runbook_name = runbook_name
        self.check = check  # a --check run: its metrics are kept apart from the real runs'
        self.junit_path, self.metrics_path, self.notify_url = junit, metrics, notify_url
        self.run_end: dict[str, Any] = {}
        self.junit: Any = None
        if junit:
            from technician_ops.outputs.junit import JUnitSink

            self.junit = JUnitSink(step_names) if step_names is not None else JUnitSink()

    def sinks(self) -> list[Any]:
        return [self] + ([self.junit] if self.junit is not None else [])

    def handle(self, event: Event) -> None:
        if event.kind is Kind.RUN_END:
            self.run_end = dict(event.data)

    def finish(self, result: Any, error: TechnicianOpsError | None) -> list[str]:
        """Write every output for ``result`` (or the refusal ``error``); return the warnings."""
        warnings: list[str] = []
        if self.junit is not None and self.junit_path:
            problem = regular_file_or_absent(Path(self.junit_path))
            try:
                if problem:
                    raise OSError(problem)
                self.junit.write(self.junit_path)
            except OSError as exc:
                warnings.append(f"JUnit report not written: {exc.strerror or exc}")
        if self.metrics_path:
            from technician_ops.outputs.metrics import write_metrics

            if result is not None:
                outcome, duration, code = result.outcome, result.duration, int(result.exit_code)
            else:
                assert error is not None
                outcome = "skipped" if error.exit_code == ExitCode.TEMPFAIL else "refused"
                duration, code = 0.0, int(error.exit_code)
            problem = regular_file_or_absent(Path(self.metrics_path))
            try:
                if problem:
                    raise OSError(problem)
                write_metrics(self.metrics_path, self.runbook_name, outcome, duration, time.time(), code,
                              check=self.check)
            except TechnicianOpsError as exc:
                warnings.append(f"metrics not written: {exc.message}")
            except OSError as exc:
                warnings.append(f"metrics not written: {exc.strerror or exc}")
        if self.notify_url and result is not None:
            from technician_ops.outputs.notify import message_for, notify, should_notify

            if should_notify(result.outcome):
                sent = notify(self.notify_url, message_for(self.run_end, self.runbook_name))
                if not sent.ok:
                    warnings.append(f"notification failed after {sent.attempts} attempt(s): {sent.error}")
        return warnings
