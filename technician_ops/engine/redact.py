"""Secret values never reach a log, artifact, record or console.

Steps that use secrets run with ``no_log``; this is the second line: every
event is redacted before any sink sees it, and every file a run wrote is
scrubbed after ansible-runner exits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MASK = "********"
# A secret shorter than this masks too much ordinary text to protect it: the run warns (``short``).
MIN_LENGTH = 4
# The tool's own structured fields: ids, times, states, counts.  Never rewritten: a one-character
# secret ("0", "a") must not turn a run id or a timestamp into something the record cannot read back.
STRUCTURAL = frozenset({
    "v", "event", "run_id", "ts", "at", "started_at", "ended_at", "outcome", "status", "phase", "exit_code",
    "duration", "changed", "changed_unknown", "approved", "check", "order", "seq", "type", "sha256", "size",
    "kind", "by", "level", "rollback_of", "action", "version", "new_version", "old_version", "from_version",
    "rollback_version", "restored_version", "replaced_version", "current_version",
})


class Redactor:
    def __init__(self, values: list[str] | None = None) -> None:
        self._values: list[str] = []
        for value in values or []:
            self.add(value)

    def add(self, value: str | None) -> None:
        if value and value not in self._values:
            self._values.append(value)
            self._values.sort(key=len, reverse=True)  # longest first: no partial leftovers

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    @property
    def short(self) -> bool:
        """Whether some secret is too short to mask meaningfully (see ``MIN_LENGTH``)."""
        return any(len(v) < MIN_LENGTH for v in self._values)

    def obj(self, data: Any) -> Any:
        """``data`` with every secret in its text masked; the tool's own fields (``STRUCTURAL``) kept."""
        if not self._values:
            return data
        kind = type(data)
        if kind is str or isinstance(data, str):
            return self.text(data)
        if kind is dict or isinstance(data, dict):  # the hot path: one event payload; exact types first
            out = {}
            for k, v in data.items():
                vk = type(v)
                if vk is str:
                    out[k] = v if k in STRUCTURAL else self.text(v)
                elif vk is int or vk is float or vk is bool or v is None:
                    out[k] = v
                else:
                    out[k] = self.obj(v)
            return out
        if isinstance(data, (list, tuple)):
            return [self.obj(v) for v in data]
        return data

    def scrub_tree(self, root: Path) -> int:
        """Rewrite every file under ``root`` that contains a secret; returns files changed."""
        if not self._values or not root.exists():
            return 0
        needles = [v.encode() for v in self._values]
        changed = 0
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath, name)
                if path.is_symlink():
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                new = data
                for needle in needles:
                    new = new.replace(needle, MASK.encode())
                if new != data:
                    tmp = path.with_name(path.name + ".scrub")
                    tmp.write_bytes(new)
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, path)
                    changed += 1
        return changed
