"""Filter plugin: what a step's last task returned, as later steps read it (``steps.NAME.*``).

The fields are documented in technician_ops/runbook/refs.py.  ``json`` is the
stdout parsed when it is a JSON object or array, else None: a check step can
print ``{"used_pct": 93}`` and a later ``when=`` compare the number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_JSON = 1 << 20  # characters of stdout parsed as JSON; longer output stays text


def step_output(result: Any) -> dict[str, Any]:
    if not isinstance(result, Mapping):
        result = {"skipped": True}
    items = result.get("results")
    if isinstance(items, list) and items and isinstance(items[-1], Mapping):  # a loop: its last item
        result = {**items[-1], "changed": result.get("changed"), "failed": result.get("failed")}
    stdout = result.get("stdout")
    stdout = stdout if isinstance(stdout, str) else ""
    stderr = result.get("stderr")
    parsed = None
    text = stdout.strip()
    if text[:1] in ("{", "[") and len(text) <= MAX_JSON:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    rc = result.get("rc")
    return {"stdout": stdout, "stdout_lines": stdout.splitlines(), "stderr": stderr if isinstance(stderr, str) else "",
            "rc": rc if isinstance(rc, int) else None, "json": parsed, "skipped": bool(result.get("skipped")),
            "failed": bool(result.get("failed")), "changed": bool(result.get("changed"))}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"technician_ops_step_output": step_output}
