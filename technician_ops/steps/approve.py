"""``approve``: a gate; the operator confirms before later steps run.

Compiled to our ``technician_ops_approve`` action plugin on the controller,
which asks the technician-ops process over its control socket, so the prompt
happens exactly when the run reaches the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.steps.base import BodyError, CompileContext, StepKind


class ApproveKind(StepKind):
    name = "approve"
    quiet = True
    asks_operator = True
    mutating = False
    gate = True
    controller = True

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        if not body.strip():
            raise BodyError("approve step needs text telling the operator what they approve")
        return body.strip()

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        return [{"name": f"approval: {step.name}", "technician_ops_approve": {"step": step.name}}]


KIND = ApproveKind()
