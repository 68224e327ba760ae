"""Action plugin: the ``terraform`` step (see kinds/terraform.py, terraform_steps.py).

Runs on localhost without a connection.  Ansible has already rendered the
arguments (so ``vars`` hold the run's parameter values); this plugin only
adapts them to :mod:`technician_ops.steps.terraform.controller` and reports artifacts
over the control channel.  A held state lock fails the step with a message
that says it is safe to retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.steps.action import ControllerAction


class ActionModule(ControllerAction):

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from technician_ops.steps.terraform import controller as terraform_steps
        from technician_ops.steps.action import NOT_UNDER_RUN, call, run_context
        from technician_ops.errors import TechnicianOpsError
        from technician_ops.steps.terraform.client import TerraformLocked

        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        context = run_context()
        if context is None:
            result.update(failed=True, msg=NOT_UNDER_RUN)
            return result
        state_dir, run_id = context
        ts = terraform_steps.TerraformStep(
            step=str(args["step"]), module=str(args["module"]), module_dir=Path(str(args["module_dir"])),
            variables=dict(args.get("vars") or {}), action=str(args.get("action", "apply")),
            workspace=str(args["workspace"]) if args.get("workspace") else None,
            lock_timeout=str(args.get("lock_timeout", "30s")),
        )
        check = bool(task_vars.get("ansible_check_mode")) or bool(task_vars.get("technician_ops_check"))

        def emit(data: dict[str, Any]) -> None:

            self.emit(data, RuntimeError)

        try:
            if args.get("undo"):
                outcome = terraform_steps.undo_step(ts, state_dir, run_id, emit=emit)
            else:
                outcome = terraform_steps.run_step(ts, state_dir, run_id, check=check, emit=emit)
        except TerraformLocked as exc:
            result.update(failed=True, retryable=True,
                          msg=f"terraform step {ts.step}: {exc.message}; nothing was changed, retry later ({exc.hint})")
            return result
        except TechnicianOpsError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            result.update(failed=True, msg=f"terraform step {ts.step}: {exc.message}{hint}")
            return result
        result.update(outcome)
        return result
