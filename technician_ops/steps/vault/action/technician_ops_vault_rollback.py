"""Action plugin: undo of a ``vault`` step, on the controller.

Reads the rotation the step recorded in its state file, writes version N's
data again as a new version (:func:`technician_ops.steps.vault.controller.roll_back`) and
returns version N's value, no_log, for the re-run of the step's apply and
verify tasks.  ``reapply`` says whether there is a value to re-apply: a
rotation that published nothing, or created the key, has none.
"""

from __future__ import annotations

from typing import Any

from technician_ops.steps.action import ControllerAction


class ActionModule(ControllerAction):

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from technician_ops.steps.vault import controller as vault_step

        result = super().run(tmp, task_vars)
        step = str(self._task.args.get("step", ""))

        def emit(data: dict[str, Any]) -> None:

            self.emit(data, vault_step.VaultStepError)

        try:
            undo = vault_step.roll_back(step, emit)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a failed task
            result.update(failed=True, msg=vault_step.describe(exc), technician_ops_tempfail=vault_step.is_tempfail(exc))
            return result
        if undo.old_value is None:
            result.update(changed=undo.restored, reapply=False, rollback_version=undo.rollback_version,
                          msg=undo.reason or "nothing to re-apply")
            return result
        result.update(
            changed=True,
            reapply=True,
            rollback_version=undo.rollback_version,
            value=undo.old_value.reveal(),
            _ansible_no_log=True,
        )
        return result
