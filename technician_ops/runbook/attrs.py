"""The attribute block of a fence info string: ``yaml {name=promote hosts="db"}``.

Two forms are read: ``key=value`` pairs separated by spaces (values may be
quoted with ``"`` or ``'``), and a flat JSON object as Runme writes it.
Parsing is strict: anything malformed raises ``AttrError`` with the column, so
a typo never silently turns a step into documentation or drops an attribute.
"""

from __future__ import annotations

import json
import re


class AttrError(ValueError):
    pass


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def split_info(info: str) -> tuple[str, str | None]:
    """Split an info string into (language, attribute text or None).

    Only an info string containing ``{`` carries attributes; the block runs
    from the first ``{`` to the last ``}``.
    """
    info = info.strip()
    start = info.find("{")
    if start < 0:
        return info.split()[0] if info else "", None
    lang = info[:start].strip()
    if " " in lang:
        raise AttrError(f"expected one language word before the attribute block, got {lang!r}")
    end = info.rfind("}")
    if end < start:
        raise AttrError("attribute block is not closed: missing '}'")
    if info[end + 1 :].strip():
        raise AttrError(f"unexpected text after the attribute block: {info[end + 1:].strip()!r}")
    return lang, info[start : end + 1]


def parse_attrs(block: str) -> dict[str, str]:
    """Parse ``{...}`` into a dict of strings.  Duplicate keys are an error."""
    inner = block[1:-1].strip()
    if inner.startswith('"'):
        return _parse_json(block)
    attrs: dict[str, str] = {}
    i, n = 0, len(inner)
    while i < n:
        if inner[i].isspace():
            i += 1
            continue
        m = _KEY.match(inner, i)
        if not m:
            raise AttrError(f"expected an attribute name at {inner[i:i + 12]!r}")
        key = m.group(0)
        i = m.end()
        if i >= n or inner[i] != "=":
            raise AttrError(f"attribute {key!r} has no value: write {key}=VALUE")
        i += 1
        if i >= n or inner[i].isspace():
            raise AttrError(f"attribute {key!r} has an empty value")
        if inner[i] in "\"'":
            value, i = _quoted(inner, i, key)
            if i < n and not inner[i].isspace():
                raise AttrError(f"expected a space after the quoted value of {key!r}")
        else:
            j = i
            while j < n and not inner[j].isspace():
                if inner[j] in "\"'":
                    raise AttrError(f"quote inside the unquoted value of {key!r}: quote the whole value")
                j += 1
            value, i = inner[i:j], j
        if key in attrs:
            raise AttrError(f"attribute {key!r} is given twice")
        attrs[key] = value
    return attrs


def _quoted(text: str, i: int, key: str) -> tuple[str, int]:
    quote = text[i]
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and quote == '"' and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == quote:
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise AttrError(f"unterminated quoted value of {key!r}")


def _parse_json(block: str) -> dict[str, str]:
    try:
        obj = json.loads(block)
    except json.JSONDecodeError as exc:
        raise AttrError(f"invalid JSON attribute block: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise AttrError("JSON attribute block must be an object")
    out: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, (dict, list)) or value is None:
            raise AttrError(f"attribute {key!r} must be a string, number or boolean")
        out[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
