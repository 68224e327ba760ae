"""The parsed, validated runbook: immutable data, no behaviour.

A ``Runbook`` is what ``load_runbook`` returns; a ``Plan`` (compiler.py) is a
runbook bound to parameters and an inventory.  Every element keeps the line it
came from so any later error can still say ``path:line``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # one of params.TYPES
    line: int
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def secret(self) -> bool:
        return self.type == "secret"


@dataclass(frozen=True)
class Step:
    """One fenced step block, or a ``{rollback=NAME}`` block (``undo_of`` set)."""

    name: str
    kind: str
    lang: str
    attrs: dict[str, str]
    body: str
    line: int  # line of the opening fence
    body_line: int  # line of the first body line
    spec: Any = None  # what the kind parsed the body into (task list, dict, text)
    undo_of: str | None = None

    @property
    def hosts(self) -> str | None:
        return self.attrs.get("hosts")


@dataclass(frozen=True)
class Trigger:
    """One entry of ``triggers:``: which alerts may start the runbook (``runbook/triggers.py``)."""

    source: str  # "alertmanager"
    match: dict[str, str]  # label -> the exact value it must have
    params: dict[str, str]  # parameter -> template over labels.NAME
    hosts: str | None  # template naming the one host the run is limited to; None: the runbook's hosts
    line: int
    labels: tuple[str, ...] = ()  # the label names the templates read: the only ones that become values


@dataclass(frozen=True)
class Runbook:
    name: str
    path: Path
    text: str
    summary: str
    hosts: str | None
    params: dict[str, Param]
    secrets: tuple[str, ...]
    lock: str
    schedule: str | None
    timeout: int | None  # seconds
    steps: tuple[Step, ...]
    undos: dict[str, Step]  # step name -> its explicit {rollback=NAME} block
    meta: dict[str, Any] = field(default_factory=dict)  # front matter as written
    warnings: tuple[Any, ...] = ()  # Diagnostics of severity "warning"
    triggers: tuple[Trigger, ...] = ()  # the alerts that may start it (``serve``)

    @property
    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def secret_names(self) -> set[str]:
        return set(self.secrets) | {p.name for p in self.params.values() if p.secret}
