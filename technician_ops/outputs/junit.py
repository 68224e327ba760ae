"""JUnit XML from the event stream, so a CI system shows each step as a test.

One ``<testsuite>`` per run (name = runbook), one ``<testcase>`` per step.  A
step never reached because an earlier one failed is ``<skipped/>``; rollback
steps are test cases named ``undo:STEP``.  The sink only reads events, which
the bus has already redacted: nothing else (no parameters, no environment) is
ever copied into the report, so the file is as safe to publish as the JSON
output.  ``write`` renames a temp file into place, so a CI job that uploads the
report never picks up half a file.

The XML is built and serialised by junitparser, the maintained Python library
for the format, rather than by hand; what it would get wrong for the strictest
consumer (the Jenkins xUnit plugin validates reports against its own schema,
see tests/ci/schemas/) is set explicitly in ``to_xml``.  junitparser is
imported only when a report is built, so ``--help`` stays instant.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from technician_ops.events import Event, Kind, Outcome
from technician_ops.fsutil import atomic_write

if TYPE_CHECKING:
    from junitparser import JUnitXml, TestCase, TestSuite

# XML 1.0 cannot carry most control characters, even escaped; ansible output can.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CLEAN_OUTCOMES = {Outcome.SUCCEEDED.value, Outcome.SKIPPED.value, Outcome.REFUSED.value,
                   Outcome.AWAITING_APPROVAL.value}


@dataclass
class _Case:
    name: str
    time: float = 0.0
    status: str = "pending"  # StepStatus value, or "pending" when never started
    errors: dict[str, str] = field(default_factory=dict)  # host -> error
    hosts: dict[str, str] = field(default_factory=dict)  # host -> HostStatus value
    message: str | None = None  # set for failures that are not per-host (rollback failures list)
    skipped: str | None = None
    error: str | None = None  # an <error>: the run itself broke, not an assertion-like failure


@dataclass
class _Suite:
    run_id: str
    runbook: str
    check: bool
    timestamp: str
    outcome: str = Outcome.RUNNING.value
    duration: float = 0.0
    failed_step: str | None = None
    cases: dict[str, _Case] = field(default_factory=dict)  # key: step or "undo:step", in order
    notices: list[str] = field(default_factory=list)


class JUnitSink:
    """An event sink that collects runs and writes them as JUnit XML.

    ``steps`` is the runbook's step names in order: events only name the steps
    that started, so without it a step never reached cannot be reported.
    """

    def __init__(self, steps: Sequence[str] | None = None) -> None:
        self.steps = list(steps or [])
        self.suites: list[_Suite] = []

    # -- the sink -------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        d = event.data
        k = event.kind
        if k is Kind.RUN_START:
            self.suites.append(_Suite(str(d.get("run_id", "")), str(d.get("runbook", "")), bool(d.get("check")),
                                      _timestamp(d.get("started_at"), event.ts)))
            return
        suite = self.suites[-1] if self.suites else None
        if suite is None:
            return  # events before RUN_START (a refused run) make no suite
        if k is Kind.STEP_START:
            case = self._case(suite, d)
            case.status = "running"
        elif k is Kind.HOST_RESULT:
            case = self._case(suite, d)
            case.hosts[str(d.get("host"))] = str(d.get("status"))
            if d.get("error") and d.get("status") in ("failed", "unreachable"):
                case.errors[str(d.get("host"))] = str(d["error"])
        elif k is Kind.STEP_END:
            case = self._case(suite, d)
            case.status = str(d.get("status"))
            case.time = float(d.get("duration") or 0.0)
            for host, status in (d.get("hosts") or {}).items():
                case.hosts[str(host)] = str(status)
        elif k is Kind.ROLLBACK_END:
            for failure in d.get("failures") or []:
                key = f"undo:{failure.get('step')}"
                case = suite.cases.setdefault(key, _Case(key))
                case.status = "failed"
                case.errors.setdefault(str(failure.get("host")), str(failure.get("error")))
        elif k is Kind.NOTICE:
            suite.notices.append(f"[{d.get('level', 'info')}] {d.get('message', '')}")
        elif k is Kind.RUN_END:
            suite.outcome = str(d.get("outcome"))
            suite.duration = float(d.get("duration") or 0.0)
            suite.failed_step = d.get("failed_step")

    @staticmethod
    def _case(suite: _Suite, d: dict[str, Any]) -> _Case:
        step = str(d.get("step"))
        key = f"undo:{step}" if d.get("phase") == "rollback" else step
        return suite.cases.setdefault(key, _Case(key))

    # -- the report -----------------------------------------------------------------
    def to_xml(self) -> JUnitXml:
        """The report as junitparser's model: one ``<testsuite>`` per run inside ``<testsuites>``.

        The totals on ``<testsuites>`` are set here rather than by junitparser's
        ``JUnitXml.update_statistics``, which also writes ``skipped`` there: an
        attribute the Jenkins xUnit plugin's JUnit schema does not allow, so the
        plugin would reject the whole report.
        """
        from junitparser import JUnitXml

        root = JUnitXml()
        suites = [self._suite(run) for run in self.suites]
        for suite in suites:
            root.append(suite)
        root.tests = sum(suite.tests for suite in suites)
        root.failures = sum(suite.failures for suite in suites)
        root.errors = sum(suite.errors for suite in suites)
        root.time = _seconds(sum(run.duration for run in self.suites))
        return root

    def _suite(self, run: _Suite) -> TestSuite:
        from junitparser import SystemOut, TestSuite

        suite = TestSuite(_clean(run.runbook))
        for name, value in (("run_id", run.run_id), ("outcome", run.outcome), ("check", str(run.check).lower())):
            suite.add_property(name, _clean(value))  # first: the Ant schema wants <properties> before the cases
        suite.add_testcases([_testcase(run, case) for case in self._ordered_cases(run)])  # also counts them
        suite.time = _seconds(run.duration)  # the run's wall time, not the sum of its steps
        suite.timestamp = run.timestamp
        if run.notices:
            suite.append(SystemOut(_clean("\n".join(run.notices))))
        return suite

    def _ordered_cases(self, suite: _Suite) -> list[_Case]:
        """Steps in runbook order (unreached ones skipped), then undo steps in undo order."""
        run_cases = [c for k, c in suite.cases.items() if not k.startswith("undo:")]
        undo_cases = [c for k, c in suite.cases.items() if k.startswith("undo:")]
        ordered: list[_Case] = []
        seen = set()
        reason = f"not reached: the run ended {suite.outcome}"
        if suite.failed_step:
            reason = f"not reached: step {suite.failed_step} failed"
        for name in self.steps:
            case = suite.cases.get(name)
            if case is None:
                case = _Case(name, skipped=reason)
            elif case.status == "skipped":
                case.skipped = "skipped on every host"
            ordered.append(case)
            seen.add(name)
        for case in run_cases:
            if case.name not in seen:
                if case.status == "skipped":
                    case.skipped = "skipped on every host"
                ordered.append(case)
        ordered.extend(undo_cases)
        finished = suite.outcome != Outcome.RUNNING.value
        if suite.outcome not in _CLEAN_OUTCOMES and not any(c.status == "failed" for c in ordered):
            # Interrupted, or ansible failed outside any step: still a red build, never a silent green one.
            ordered.append(_Case("run", time=suite.duration,
                                 error=f"the run ended {suite.outcome}" if finished else "the run did not finish"))
        return ordered

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report atomically (temp file in the same directory, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        self.to_xml().write(buffer, pretty=True)
        atomic_write(target, buffer.getvalue(), mode=0o644)
        return target


def _testcase(run: _Suite, case: _Case) -> TestCase:
    from junitparser import Error, Failure, Skipped, TestCase

    testcase = TestCase(_clean(case.name), _clean(run.runbook), _seconds(case.time))
    if case.error is not None:
        testcase.result = [Error(_clean(case.error), run.outcome)]
    elif case.status == "failed":
        failure = Failure(_clean(_failure_message(case)), "step_failed")
        failure.text = _clean("\n".join(f"{h}: {e}" for h, e in case.errors.items()) or _failure_message(case))
        testcase.result = [failure]
    elif case.skipped is not None:
        testcase.result = [Skipped(_clean(case.skipped))]
    return testcase


def _seconds(value: float) -> float:
    """Milliseconds at most: the xUnit plugin's time type allows three decimals and no exponent."""
    return round(max(value, 0.0), 3)


def _failure_message(case: _Case) -> str:
    failed = [h for h, s in case.hosts.items() if s in ("failed", "unreachable")] or list(case.errors)
    what = "undo" if case.name.startswith("undo:") else "step"
    name = case.name.removeprefix("undo:")
    return f"{what} {name} failed on {', '.join(failed)}" if failed else f"{what} {name} failed"


def _timestamp(started_at: Any, fallback: float) -> str:
    """JUnit's timestamp is an ISO 8601 date-time without a zone; ours is UTC."""
    if isinstance(started_at, str):
        try:
            parsed = dt.datetime.fromisoformat(started_at.replace("Z", "+00:00"))
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(dt.timezone.utc)
            return parsed.strftime("%Y-%m-%dT%H:%M:%S")
        except ValueError:
            pass
    return dt.datetime.fromtimestamp(fallback, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _clean(text: str) -> str:
    return _INVALID_XML.sub("\ufffd", str(text))
