"""What a step kind is: how it reads its body, what it compiles to, its undo.

Kinds are a registry (``kinds/__init__.py`` discovers every module in this
package), so adding a kind is adding one module; the parser, validator,
compiler and runner never name a kind.  Kind modules must stay cheap to
import: ``lint`` loads them all, and ansible is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from technician_ops.runbook import yamlio
from technician_ops.runbook.model import Runbook, Step

# Modules that only read: a task list made of these needs no undo.
READ_ONLY_MODULES = frozenset(
    m
    for name in (
        "assert", "debug", "fail", "meta", "pause", "ping", "set_fact", "set_stats", "setup",
        "slurp", "stat", "find", "getent", "wait_for", "wait_for_connection", "include_vars",
        "package_facts", "service_facts", "uri", "fetch", "async_status",
    )
    for m in (name, f"ansible.builtin.{name}")
)
# Keys of a task that are not its module.
TASK_KEYWORDS = frozenset(
    """name when register changed_when failed_when ignore_errors ignore_unreachable loop loop_control
    with_items with_dict with_list until retries delay tags vars environment become become_user
    become_method check_mode diff no_log notify delegate_to delegate_facts run_once throttle timeout
    args any_errors_fatal collections module_defaults debugger connection async poll action local_action
    listen""".split()
)


class BodyError(ValueError):
    """A problem in a step body; ``offset`` is the 0-based line within the body."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass
class CompileContext:
    """What a kind needs to compile one step of a bound plan."""

    runbook: Runbook
    project_root: Path
    params: dict[str, Any]
    secret_names: set[str]
    check: bool = False
    phase: str = "run"  # "run" or "rollback"
    hosts: Any = None  # resolved hosts for this play (pattern string or list of names)
    extra: dict[str, Any] = field(default_factory=dict)


class StepKind:
    name: ClassVar[str] = ""
    languages: ClassVar[tuple[str, ...]] = ()  # fence languages that default to this kind
    mutating: ClassVar[bool] = True  # False: read-only; runs under --check too; no undo needed
    controller: ClassVar[bool] = False  # runs on the controller, not on the step's hosts
    auto_undo: ClassVar[bool] = False  # the kind registers its own undo (backup, vault)
    undo_on_own_failure: ClassVar[bool] = False  # undo even when this very step failed
    extra_attrs: ClassVar[frozenset[str]] = frozenset()

    # -- parse/validate --------------------------------------------------
    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        """Return the parsed spec or raise BodyError."""
        return body

    def changes_things(self, step: Step) -> bool:
        """Whether this step can change state, so it should have an undo."""
        return self.mutating

    def has_auto_undo(self, step: Step) -> bool:
        """Whether this very step brings its own undo (a kind may decide per step)."""
        return self.auto_undo

    def referenced_names(self, step: Step) -> str:
        """Text searched for secret-variable references (decides no_log)."""
        return step.body

    # -- compile -----------------------------------------------------------
    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def undo_tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        """Tasks of the automatic undo, for kinds with ``auto_undo``."""
        raise NotImplementedError

    def plays(self, step: Step, ctx: CompileContext, tasks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The plays of this step.  The default is one play on the step's hosts."""
        from technician_ops.plan.compiler import standard_play

        return [standard_play(self, step, ctx, self.tasks(step, ctx) if tasks is None else tasks)]


def load_yaml_body(body: str) -> Any:
    try:
        return yamlio.load(body) if body.strip() else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise BodyError(f"invalid YAML in step body: {problem}", mark.line if mark else 0) from None


def task_lines(body: str) -> list[int]:
    """0-based line of each top-level list item, for errors about one task."""
    try:
        node = yamlio.compose(body)
    except yaml.YAMLError:
        return []
    if isinstance(node, yaml.SequenceNode):
        return [item.start_mark.line for item in node.value]
    return []


def parse_task_list(body: str) -> list[dict[str, Any]]:
    data = load_yaml_body(body)
    if not isinstance(data, list) or not data:
        raise BodyError("step body must be a YAML list of Ansible tasks (each item starting with '- ')")
    lines = task_lines(body)
    for i, task in enumerate(data):
        offset = lines[i] if i < len(lines) else 0
        if not isinstance(task, dict):
            raise BodyError(f"task {i + 1} is not a mapping: each list item must be one Ansible task", offset)
        if "hosts" in task or "tasks" in task:
            raise BodyError(f"task {i + 1} looks like a play (has hosts/tasks): a step body is a task list; use kind=playbook for whole plays", offset)
        modules = [k for k in task if k not in TASK_KEYWORDS and not k.startswith("with_")]
        if not modules and not any(k in task for k in ("block", "action", "local_action", "include_tasks", "import_tasks")):
            raise BodyError(f"task {i + 1} names no module", offset)
    return data


def task_changes_things(task: dict[str, Any]) -> bool:
    if task.get("changed_when") in (False, "false", "False"):
        return False
    if task.get("check_mode") is True:
        return False
    if "block" in task:
        return any(task_changes_things(t) for t in task.get("block") or [] if isinstance(t, dict))
    modules = [k for k in task if k not in TASK_KEYWORDS]
    return any(m not in READ_ONLY_MODULES for m in modules)
