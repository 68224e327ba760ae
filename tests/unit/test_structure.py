"""The layout rules of technician_ops/: each part imports only downward, the engine names no step kind,
and every event a run emits has the typed payload its kind declares."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

from technician_ops import steps
from technician_ops.engine.executor import StepTracker
from technician_ops.engine.redact import Redactor
from technician_ops.events import PAYLOADS, Bus, Event

PACKAGE = Path(__file__).resolve().parents[2] / "technician_ops"

# Lowest first; a module may import its own layer and the ones before it.
LAYERS = [
    {"errors", "outcomes", "fsutil", "state", "channel"},
    {"events", "project", "runbook", "contrib"},
    {"steps"},
    {"plan", "audit", "ansible_plugins"},
    {"engine", "node_agent"},  # node_agent: what an execution node runs, over the engine
    {"outputs"},
    {"api"},
    {"serve"},  # the webhook server and its web view: over the API, under the command line
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("technician_ops"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(parts[1])
            else:
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("technician_ops."))
    return out


def test_every_module_imports_only_its_own_layer_or_below() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        if part == "__init__":
            continue
        assert part in RANK, f"{path}: put {part!r} in a layer of this test"
        for target in _imports(path):
            if target in RANK and RANK[target] > RANK[part]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert upward == []


def test_the_engine_names_no_step_kind() -> None:
    """The engine reaches kinds through their hooks and attributes only: it never compares a kind's
    name, imports a kind's package, or spells a kind that is not also a word of Ansible's own
    ("check", "ansible", "shell", "playbook" name Ansible things the engine drives)."""
    names = set(steps.registry()) - {"check", "ansible", "shell", "playbook"}
    assert {"vault", "backup", "terraform", "approve"} <= names
    offenders = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if re.search(r"kind\.name\s*(==|!=|in\b)|\.kind\s*==", text):
            offenders.append(f"{path.name}: compares a kind's name")
        for name in set(steps.registry()):
            if re.search(rf"technician_ops\.steps\.{name}\b|from technician_ops\.steps import {name}\b", text):
                offenders.append(f"{path.name}: imports the {name} kind")
        for name in names:
            if re.search(rf"""["']{name}["']|\b{name}_step""", text):
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_every_kind_is_one_module_or_package_under_steps() -> None:
    for name, kind in steps.registry().items():
        module = type(kind).__module__
        assert module.startswith("technician_ops.steps."), module
        assert module.split(".")[2] == name, f"kind {name} lives in {module}"
    # the kinds that ship Ansible plugins keep them in their own package
    assert {d.parent.name for d in steps.action_dirs()} == {"backup", "terraform", "vault"}


class _Checking:
    """A sink that checks each event against the TypedDict of its kind."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle(self, event: Event) -> None:
        payload = PAYLOADS[event.kind]
        self.seen.append(event.kind.value)
        if payload is None:
            return
        hints = typing.get_type_hints(payload)
        required = getattr(payload, "__required_keys__", set(hints))
        assert required <= set(event.data), (event.kind, required - set(event.data))
        assert set(event.data) <= set(hints), (event.kind, set(event.data) - set(hints))


def test_tracker_events_carry_their_typed_payloads() -> None:
    sink = _Checking()
    tracker = StepTracker(Bus([sink]), {"deploy": "deploy"}, "run", Redactor([]), {"deploy": "ansible"}, {"deploy": "web"})
    for event in (
        {"event": "playbook_on_play_start", "event_data": {"play": "deploy"}},
        {"event": "playbook_on_task_start", "event_data": {"task": "copy the file"}},
        {"event": "runner_on_ok", "event_data": {"host": "web1", "res": {"changed": True}, "duration": 0.5}},
        {"event": "runner_on_failed", "event_data": {"host": "web2", "res": {"msg": "boom", "rc": 2}}},
        {"event": "playbook_on_stats", "event_data": {}},
    ):
        tracker.handle(event)
    assert sink.seen == ["step_start", "task_start", "host_result", "host_result", "step_end"]
    state = tracker.steps["deploy"]
    assert state.status.value == "failed" and state.changed and state.failed_hosts == ["web2"]
