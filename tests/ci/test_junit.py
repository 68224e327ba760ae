"""JUnit reports from real event streams, validated against tests/ci/junit.xsd.

lxml is not installed, so ``validate`` is a small structural validator driven
by the XSD itself: element names, allowed children and their order/counts,
required and known attributes, and the integer/decimal/dateTime types.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from technician_ops.events import Bus, Kind
from technician_ops.outputs.junit import JUnitSink
from technician_ops.engine.redact import Redactor

XSD = Path(__file__).with_name("junit.xsd")
XS = "{http://www.w3.org/2001/XMLSchema}"
TYPES = {
    "xs:int": re.compile(r"^-?\d+$"),
    "xs:decimal": re.compile(r"^-?\d+(\.\d+)?$"),
    "xs:dateTime": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$"),
    "xs:string": re.compile(r"(?s).*"),
}


def _schema() -> dict[str, dict]:
    rules: dict[str, dict] = {}
    for el in ET.parse(XSD).getroot().findall(f"{XS}element"):
        ct = el.find(f"{XS}complexType")
        rule = {"attrs": {}, "required": set(), "children": [], "ordered": False, "text": True}
        if ct is not None:
            rule["text"] = ct.get("mixed") == "true"
            group = ct.find(f"{XS}sequence")
            rule["ordered"] = group is not None
            if group is None:
                group = ct.find(f"{XS}choice")
            if group is not None:
                for child in group.findall(f"{XS}element"):
                    top = group.get("maxOccurs") == "unbounded"
                    rule["children"].append((child.get("ref"), "unbounded" if top else child.get("maxOccurs", "1")))
            for attr in ct.findall(f"{XS}attribute"):
                rule["attrs"][attr.get("name")] = attr.get("type")
                if attr.get("use") == "required":
                    rule["required"].add(attr.get("name"))
        rules[el.get("name")] = rule
    return rules


SCHEMA = _schema()


def validate(el: ET.Element, path: str = "") -> None:
    where = f"{path}/{el.tag}"
    assert el.tag in SCHEMA, f"{where}: element not in the schema"
    rule = SCHEMA[el.tag]
    missing = rule["required"] - set(el.attrib)
    assert not missing, f"{where}: missing required attributes {missing}"
    for name, value in el.attrib.items():
        assert name in rule["attrs"], f"{where}: attribute {name!r} not in the schema"
        assert TYPES[rule["attrs"][name]].match(value), f"{where}@{name}={value!r} is not {rule['attrs'][name]}"
    if not rule["text"]:
        assert not (el.text or "").strip(), f"{where}: text not allowed"
    allowed = [name for name, _ in rule["children"]]
    position = 0
    counts: dict[str, int] = {}
    for child in el:
        assert child.tag in allowed, f"{where}: child {child.tag!r} not allowed (allowed: {allowed})"
        index = allowed.index(child.tag)
        if rule["ordered"]:
            assert index >= position, f"{where}: {child.tag!r} out of order"
            position = index
        counts[child.tag] = counts.get(child.tag, 0) + 1
        limit = dict(rule["children"])[child.tag]
        assert limit == "unbounded" or counts[child.tag] <= int(limit), f"{where}: too many {child.tag!r}"
        validate(child, where)


def check_counts(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases)
    for kind, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
        assert int(suite.get(attr)) == sum(1 for c in cases if c.find(kind) is not None)


def report(tmp_path: Path, sink: JUnitSink) -> ET.Element:
    path = sink.write(tmp_path / "out" / "junit.xml")
    root = ET.parse(path).getroot()
    validate(root)
    for suite in root.findall("testsuite"):
        check_counts(suite)
    return root


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


def cases(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in root.find("testsuite").findall("testcase")}


def test_success_one_suite_with_properties(tmp_path: Path) -> None:
    sink = JUnitSink(STEPS)
    bus = Bus([sink])
    start(bus)
    for name in STEPS:
        step(bus, name, {"db1": ("changed", None), "db2": ("ok", None)})
    end(bus, "succeeded")
    root = report(tmp_path, sink)
    suite = root.find("testsuite")
    assert suite.get("name") == "db-migrate"
    assert suite.get("timestamp") == "2024-05-01T10:00:00"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "0", "0", "0")
    assert suite.get("time") == "9.500"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"run_id": "r1", "outcome": "succeeded", "check": "false"}
    assert [c.get("name") for c in suite.findall("testcase")] == STEPS
    assert {c.get("classname") for c in suite.findall("testcase")} == {"db-migrate"}
    assert all(len(c) == 0 for c in suite.findall("testcase"))


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
    root = report(tmp_path, sink)
    by = cases(root)
    assert list(by) == ["backup", "stop", "migrate", "start", "undo:stop"]
    failure = by["migrate"].find("failure")
    assert failure.get("message") == "step migrate failed on db1, db2"
    assert "db1: psql: relation exists; rc=3" in failure.text and "db2: ssh: timed out" in failure.text
    assert by["start"].find("skipped").get("message") == "not reached: step migrate failed"
    assert len(by["undo:stop"]) == 0  # the undo succeeded
    suite = root.find("testsuite")
    assert (suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("1", "1", "0")


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
    assert by["undo:stop"].find("failure").get("message") == "undo stop failed on db1"
    assert "unit masked" in by["undo:stop"].find("failure").text
    assert "has no undo" in by["undo:backup"].find("failure").text
    assert by["start"].find("skipped") is not None


def test_interrupted_run_is_never_green(tmp_path: Path) -> None:
    sink = JUnitSink(STEPS)
    bus = Bus([sink])
    start(bus)
    step(bus, "backup", {"db1": ("ok", None)})
    bus.emit(Kind.STEP_START, step="stop", kind="shell", hosts="db", phase="run")
    end(bus, "interrupted")
    root = report(tmp_path, sink)
    by = cases(root)
    assert by["run"].find("error").get("message") == "the run ended interrupted"
    assert by["migrate"].find("skipped").get("message") == "not reached: the run ended interrupted"
    assert root.find("testsuite").get("errors") == "1"


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
    root = ET.fromstring(text)
    validate(root)
    assert [s.find("properties/property").get("value") for s in root.findall("testsuite")] == ["r1", "r2"]
    assert root.get("tests") == "2" and root.get("failures") == "2"
    assert root.find("testsuite/system-out").text.startswith("[error] token")


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


def test_validator_rejects_bad_documents() -> None:
    """The validator must be able to fail, or the tests above prove nothing."""
    with pytest.raises(AssertionError, match="required"):
        validate(ET.fromstring('<testsuites><testsuite tests="1"/></testsuites>'))
    with pytest.raises(AssertionError, match="not allowed"):
        validate(ET.fromstring('<testsuite name="a" tests="1"><failure/></testsuite>'))
    with pytest.raises(AssertionError, match="out of order"):
        validate(ET.fromstring('<testsuite name="a" tests="0"><system-out/><properties/></testsuite>'))
    with pytest.raises(AssertionError, match="is not xs:int"):
        validate(ET.fromstring('<testsuite name="a" tests="x"/>'))
