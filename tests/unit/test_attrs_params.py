from __future__ import annotations

import pytest

from technician_ops.runbook.attrs import AttrError, parse_attrs, split_info
from technician_ops.errors import ParameterError
from technician_ops.runbook.model import Param
from technician_ops.runbook.params import bind, parse_assignments, parse_duration


@pytest.mark.parametrize("info,lang,attrs", [
    ('yaml {name=promote hosts="{{ standby }}"}', "yaml", {"name": "promote", "hosts": "{{ standby }}"}),
    ("sh {name=a kind=check}", "sh", {"name": "a", "kind": "check"}),
    ("bash {name='x y' serial=2}", "bash", {"name": "x y", "serial": "2"}),
    ('yaml {"name":"p","hosts":"db","serial":1,"become":true}', "yaml", {"name": "p", "hosts": "db", "serial": "1", "become": "true"}),
    ("{rollback=promote}", "", {"rollback": "promote"}),
    (r'yaml {when="x == \"a\""}', "yaml", {"when": 'x == "a"'}),
])
def test_attribute_blocks(info: str, lang: str, attrs: dict[str, str]) -> None:
    got_lang, block = split_info(info)
    assert got_lang == lang
    assert block is not None and parse_attrs(block) == attrs


@pytest.mark.parametrize("info,message", [
    ("yaml {name}", "has no value"),
    ("yaml {name=a name=b}", "given twice"),
    ('yaml {name="a}', "unterminated"),
    ("yaml {name=a} trailing", "unexpected text"),
    ("yaml python {name=a}", "one language word"),
    ('yaml {"name": ["x"]}', "must be a string"),
    ("yaml {=a}", "expected an attribute name"),
])
def test_malformed_attribute_blocks(info: str, message: str) -> None:
    with pytest.raises(AttrError, match=message):
        lang, block = split_info(info)
        parse_attrs(block or "")


def test_info_without_braces_is_not_a_step() -> None:
    assert split_info("yaml") == ("yaml", None)


PARAMS = {
    "count": Param("count", "int", 1, default=3),
    "flag": Param("flag", "bool", 2, default=False),
    "mode": Param("mode", "choice", 3, choices=("a", "b"), default="a"),
    "target": Param("target", "host", 4, required=True),
    "token": Param("token", "secret", 5),
}


def test_bind_coerces_types_and_applies_defaults() -> None:
    values = bind(PARAMS, {"count": "7", "flag": "yes", "target": "db1"}, environ={})
    assert values == {"count": 7, "flag": True, "mode": "a", "target": "db1", "token": None}


def test_bind_reads_environment() -> None:
    values = bind(PARAMS, {}, environ={"TECHNICIAN_OPS_PARAM_TARGET": "db2", "TECHNICIAN_OPS_PARAM_TOKEN": "s3"})
    assert values["target"] == "db2" and values["token"] == "s3"


def test_bind_reports_every_problem_naming_the_parameter() -> None:
    with pytest.raises(ParameterError) as exc:
        bind(PARAMS, {"count": "many", "mode": "c", "nope": "1"}, environ={})
    text = exc.value.message
    assert "unknown parameter 'nope'" in text
    assert "parameter 'count' must be an integer, got 'many'" in text
    assert "parameter 'mode' must be one of a, b; got 'c'" in text
    assert "missing required parameter 'target'" in text


def test_assignments_and_durations() -> None:
    assert parse_assignments(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ParameterError):
        parse_assignments(["novalue"])
    assert parse_duration("15m") == 900 and parse_duration(30) == 30 and parse_duration("2h") == 7200
    with pytest.raises(ValueError):
        parse_duration("soon")
