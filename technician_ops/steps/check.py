"""``check``: tasks or a script that only read.  Runs under ``--check`` too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.steps.base import BodyError, CompileContext, StepKind, parse_task_list
from technician_ops.steps.shell import script_task


class CheckKind(StepKind):
    name = "check"
    mutating = False
    gate = True

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        if lang in ("yaml", "yml", ""):
            return parse_task_list(body)
        if not body.strip():
            raise BodyError("check step has an empty script")
        return body

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        if isinstance(step.spec, str):
            return [script_task(step, ctx, read_only=True)]
        tasks = []
        for task in step.spec:
            task = dict(task)
            task.setdefault("check_mode", False)  # a check must really look, even in --check
            task.setdefault("changed_when", False)
            tasks.append(task)
        return tasks


KIND = CheckKind()
