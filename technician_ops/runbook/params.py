"""Typed runbook parameters: declaration checks and value coercion.

Values arrive as strings (``-p key=value``, environment) and leave as typed
Python values.  Every error names the parameter, because at 3 a.m. "invalid
literal for int()" is not an answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from technician_ops.errors import ParameterError
from technician_ops.runbook.model import Param

TYPES = ("string", "int", "bool", "host", "choice", "secret")
ENV_PREFIX = "TECHNICIAN_OPS_PARAM_"

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_INT = re.compile(r"^[+-]?[0-9]+$", re.ASCII)
_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")
MAX_DURATION = 100_000_000  # seconds: the largest task timeout Ansible accepts
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$", re.ASCII)


def coerce(param: Param, raw: Any) -> Any:
    """Turn ``raw`` into the parameter's type or raise ParameterError."""
    name, kind = param.name, param.type
    if kind == "int":
        if isinstance(raw, bool):
            raise ParameterError(f"parameter {name!r} must be an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        text = str(raw).strip()
        if not _INT.match(text):  # int() would take "1_000" and non-ASCII digits too
            raise ParameterError(f"parameter {name!r} must be an integer, got {raw!r} (ASCII digits and an optional sign)")
        return int(text, 10)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ParameterError(f"parameter {name!r} must be true or false, got {raw!r}")
    if kind == "choice":
        text = str(raw)
        if text not in param.choices:
            raise ParameterError(f"parameter {name!r} must be one of {', '.join(param.choices)}; got {text!r}")
        return text
    if kind == "host":
        text = str(raw).strip()
        if not _HOST.match(text):
            raise ParameterError(f"parameter {name!r} must be one inventory host name, got {raw!r}")
        return text
    if kind == "secret":
        return str(raw)  # never echo a secret value back in an error
    return str(raw)


def bind(params: Mapping[str, Param], given: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Resolve every parameter: CLI value, else environment, else default.

    Unknown names and missing required parameters are errors; all problems
    are reported together so one retry fixes them all.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    unknown = sorted(set(given) - set(params))
    for name in unknown:
        known = ", ".join(sorted(params)) or "none"
        problems.append(f"unknown parameter {name!r} (this runbook takes: {known})")
    values: dict[str, Any] = {}
    for name, param in params.items():
        env_key = ENV_PREFIX + name.upper()
        if name in given:
            raw: Any = given[name]
        elif env_key in environ:
            raw = environ[env_key]
        elif param.required:
            problems.append(f"missing required parameter {name!r}: pass -p {name}=VALUE or set {env_key}")
            continue
        else:
            raw = param.default
        if raw is None:
            values[name] = None
            continue
        try:
            values[name] = coerce(param, raw)
        except ParameterError as exc:
            problems.append(exc.message)
    if problems:
        raise ParameterError("\n".join(problems))
    return values


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"parameter {pair!r} must be written KEY=VALUE")
        key = key.strip()
        if key in out:
            raise ParameterError(f"parameter {key!r} is given twice")
        out[key] = value
    return out


def parse_duration(value: Any) -> int:
    """``"15m"`` -> 900.  Plain integers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int):
        if value <= 0 or value > MAX_DURATION:
            raise ValueError(f"duration must be between 1 and {MAX_DURATION} seconds, got {value}")
        return value
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"invalid duration {value!r}: write e.g. 90s, 15m, 2h")
    amount = int(m.group(1))
    seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {value!r} is longer than Ansible accepts ({MAX_DURATION} s, about 3 years)")
    return seconds
