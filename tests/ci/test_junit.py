"""JUnit reports from real event streams, read the way their consumers read them.

Every report is validated against the Jenkins xUnit plugin's own JUnit schema
(tests/ci/schemas/, vendored byte for byte) with xmlschema, a complete XSD
validator, and then parsed with junitparser: what the assertions see is what a
CI system reading the file would see.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from technician_ops.events import Bus, Kind
from technician_ops.outputs.junit import JUnitSink
from technician_ops.engine.redact import Redactor

SCHEMAS = Path(__file__).with_name("schemas")
JENKINS_XUNIT = xmlschema.XMLSchema(SCHEMAS / "jenkins-xunit-junit-10.xsd")


def validate(source: str | Path) -> None:
    """Fail with every reason the xUnit plugin would give for rejecting the report."""
    errors = [f"{e.path}: {e.reason}" for e in JENKINS_XUNIT.iter_errors(str(source))]
    assert not errors, "\n".join(errors)


def check_counts(path: Path) -> None:
    """The counts as written in the file (junitparser would recompute a missing one) match the cases."""
    for suite in ET.parse(path).getroot().findall("testsuite"):
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        for kind, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            assert int(suite.get(attr)) == sum(1 for c in cases if c.find(kind) is not None)


def report(tmp_path: Path, sink: JUnitSink) -> JUnitXml:
    path = sink.write(tmp_path / "out" / "junit.xml")
    validate(path)
    check_counts(path)
    return JUnitXml.fromfile(str(path))


STEPS = ["backup", "stop", "migrate", "start"]


def start(bus: Bus, run_id: str = "r1") -> None:
    bus.emit(Kind.RUN_START, run_id=run_id, runbook="db-migrate", path="runbooks/db-migrate.md", check=False,
             params={}, operator={}, origin={}, started_at="2024-05-01T10:00:00.123Z")


def step(bus: Bus, name: str, results: dict[str, tuple[str, str | None]], phase: str = "run") -> None:
    bus.emit(Kind.STEP_START, step=name, kind="shell", hosts="db", phase=phase)
    for host, (status, error) in results.items():
        bus.emit(Kind.HOST_RESULT, step=name, host=host, status=status, changed=status == "changed", duration=0.5,
                 error=error, phase=phase)
    failed = any(s in ("failed", "unreachable") for s, _ in results.values())
    bus.emit(Kind.STEP_END, step=name, status="failed" if failed else "succeeded", duration=1.25, phase=phase,
             hosts={h: s for h, (s, _) in results.items()})


def end(bus: Bus, outcome: str, failed_step: str | None = None, failed_hosts: list[str] | None = None) -> None:
    bus.emit(Kind.RUN_END, run_id="r1", outcome=outcome, exit_code=0, ended_at="2024-05-01T10:00:09Z", duration=9.5,
             failed_step=failed_step, failed_hosts=failed_hosts or [])


def suites(xml: JUnitXml) -> list[TestSuite]:
    return list(xml)


def cases(xml: JUnitXml) -> dict[str, TestCase]:
    return {c.name: c for c in suites(xml)[0]}


def only_result(case: TestCase) -> Failure | Error | Skipped:
    [result] = case.result
    return result


def test_success_one_suite_with_properties(tmp_path: Path) -> None:
    sink = JUnitSink(STEPS)
    bus = Bus([sink])
    start(bus)
    for name in STEPS:
        step(bus, name, {"db1": ("changed", None), "db2": ("ok", None)})
    end(bus, "succeeded")
    [suite] = suites(report(tmp_path, sink))
    assert suite.name == "db-migrate"
    assert suite.timestamp == "2024-05-01T10:00:00"
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 0, 0, 0)
    assert suite.time == 9.5  # the run's wall time, not the 4 x 1.25 s of its steps
    assert {p.name: p.value for p in suite.properties()} == {"run_id": "r1", "outcome": "succeeded", "check": "false"}
    assert [c.name for c in suite] == STEPS
    assert {c.classname for c in suite} == {"db-migrate"}
    assert {c.time for c in suite} == {1.25}
    assert all(c.is_passed for c in suite)


def test_failure_skips_unreached_steps_and_lists_undo(tmp_path: Path) -> None:
    sink = JUnitSink(STEPS)
    bus = Bus([sink])
    start(bus)
    step(bus, "backup", {"db1": ("changed", None)})
    step(bus, "stop", {"db1": ("changed", None)})
    step(bus, "migrate", {"db1": ("failed", "psql: relation exists; rc=3"), "db2": ("unreachable", "ssh: timed out")})
    bus.emit(Kind.ROLLBACK_START, steps=["stop"])
    step(bus, "stop", {"db1": ("changed", None)}, phase="rollback")
    bus.emit(Kind.ROLLBACK_END, outcome="rolled_back", failures=[], steps=["stop"])
    end(bus, "rolled_back", "migrate", ["db1", "db2"])
    xml = report(tmp_path, sink)
    by = cases(xml)
    assert list(by) == ["backup", "stop", "migrate", "start", "undo:stop"]
    failure = only_result(by["migrate"])
    assert isinstance(failure, Failure) and failure.type == "step_failed"
    assert failure.message == "step migrate failed on db1, db2"
    assert "db1: psql: relation exists; rc=3" in failure.text and "db2: ssh: timed out" in failure.text
    skipped = only_result(by["start"])
    assert isinstance(skipped, Skipped) and skipped.message == "not reached: step migrate failed"
    assert by["backup"].is_passed and by["stop"].is_passed
    assert by["undo:stop"].is_passed  # the undo succeeded
    suite = suites(xml)[0]
    assert (suite.failures, suite.skipped, suite.errors) == (1, 1, 0)


def test_rollback_failure_is_a_failed_undo_case(tmp_path: Path) -> None:
    sink = JUnitSink(STEPS)
    bus = Bus([sink])
    start(bus)
    step(bus, "backup", {"db1": ("changed", None)})
    step(bus, "stop", {"db1": ("changed", None)})
    step(bus, "migrate", {"db1": ("failed", "boom")})
    step(bus, "stop", {"db1": ("failed", "systemctl start: unit masked")}, phase="rollback")
    bus.emit(Kind.ROLLBACK_END, outcome="rollback_failed", steps=["stop"], failures=[
        {"step": "stop", "host": "db1", "error": "systemctl start: unit masked"},
        {"step": "backup", "host": "db1", "error": "step changed things and has no undo"},
    ])
    end(bus, "rollback_failed", "migrate", ["db1"])
    by = cases(report(tmp_path, sink))
    assert only_result(by["undo:stop"]).message == "undo stop failed on db1"
    assert "unit masked" in only_result(by["undo:stop"]).text
    assert by["undo:backup"].is_failure and "has no undo" in only_result(by["undo:backup"]).text
    assert by["start"].is_skipped


def test_interrupted_run_is_never_green(tmp_path: Path) -> None:
    sink = JUnitSink(STEPS)
    bus = Bus([sink])
    start(bus)
    step(bus, "backup", {"db1": ("ok", None)})
    bus.emit(Kind.STEP_START, step="stop", kind="shell", hosts="db", phase="run")
    end(bus, "interrupted")
    xml = report(tmp_path, sink)
    by = cases(xml)
    error = only_result(by["run"])
    assert isinstance(error, Error) and error.message == "the run ended interrupted" and error.type == "interrupted"
    assert only_result(by["migrate"]).message == "not reached: the run ended interrupted"
    assert suites(xml)[0].errors == 1


def test_two_runs_two_suites_and_secrets_stay_redacted(tmp_path: Path) -> None:
    sink = JUnitSink(["only"])
    bus = Bus([sink], redactor=Redactor(["hunter2-secret"]))
    for run_id in ("r1", "r2"):
        start(bus, run_id)
        step(bus, "only", {"h\x01ost": ("failed", "login with hunter2-secret refused")})
        bus.emit(Kind.NOTICE, level="error", message="token hunter2-secret rejected")
        end(bus, "failed", "only")
    path = sink.write(tmp_path / "junit.xml")
    text = path.read_text()
    assert "hunter2-secret" not in text
    validate(path)  # the control character in the host name was replaced, or the XML would not even parse
    xml = JUnitXml.fromfile(str(path))
    assert [dict((p.name, p.value) for p in s.properties())["run_id"] for s in xml] == ["r1", "r2"]
    root = ET.fromstring(text)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "2", "0")
    assert root.find("testsuite/system-out").text.startswith("[error] token")
    assert only_result(cases(xml)["only"]).message == "step only failed on h\ufffdost"


def test_durations_stay_in_the_plugins_time_format(tmp_path: Path) -> None:
    """xUnit's time type has no exponent and three decimals: 1e-05 or 0.1234 would fail the report."""
    sink = JUnitSink(["quick"])
    bus = Bus([sink])
    start(bus)
    bus.emit(Kind.STEP_START, step="quick", kind="shell", hosts="db", phase="run")
    bus.emit(Kind.STEP_END, step="quick", status="succeeded", duration=0.00001, phase="run", hosts={})
    bus.emit(Kind.RUN_END, run_id="r1", outcome="succeeded", exit_code=0, duration=0.12345, failed_step=None,
             failed_hosts=[])
    xml = report(tmp_path, sink)
    assert cases(xml)["quick"].time == 0.0 and suites(xml)[0].time == 0.123


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "junit.xml"
    target.write_text("old, not xml")
    sink = JUnitSink()
    bus = Bus([sink])
    start(bus)
    end(bus, "succeeded")
    sink.write(target)
    assert ET.parse(target).getroot().tag == "testsuites"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]  # no temp file left behind


@pytest.mark.parametrize(("document", "reason"), [
    ('<testsuites skipped="0"/>', "'skipped' attribute not allowed"),
    ('<testsuites><testsuite name="a" tests="1"/></testsuites>', "missing required attribute"),
    ('<testsuite name="a" tests="1" failures="0" errors="0" time="1e-05"/>', "doesn't match any pattern"),
    ('<testsuite name="a" tests="0" failures="0" errors="0"><failure/></testsuite>', "Unexpected child"),
])
def test_the_schema_rejects_what_the_plugin_rejects(tmp_path: Path, document: str, reason: str) -> None:
    """The validator must be able to fail, or the tests above prove nothing."""
    path = tmp_path / "bad.xml"
    path.write_text(document)
    with pytest.raises(AssertionError, match=re.escape(reason)):
        validate(path)


def test_the_vendored_schema_is_the_plugins_file() -> None:
    """The schema is a copy, not ours to edit: its sha256 is the one its README records."""
    readme = (SCHEMAS / "README.md").read_text()
    recorded = re.search(r"\| sha256 \| `([0-9a-f]{64})` \|", readme)
    assert recorded is not None
    assert hashlib.sha256((SCHEMAS / "jenkins-xunit-junit-10.xsd").read_bytes()).hexdigest() == recorded.group(1)
