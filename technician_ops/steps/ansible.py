"""``ansible``: a list of Ansible tasks run on the step's hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.steps.base import CompileContext, StepKind, parse_task_list, task_changes_things


class AnsibleKind(StepKind):
    name = "ansible"
    languages = ("yaml", "yml")

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        return parse_task_list(body)

    def changes_things(self, step: Step) -> bool:
        return any(task_changes_things(t) for t in step.spec or [])

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        return [dict(t) for t in step.spec]


KIND = AnsibleKind()
