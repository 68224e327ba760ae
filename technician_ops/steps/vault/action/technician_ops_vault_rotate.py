"""Action plugin: the ``vault`` step's rotation, on the controller.

Rotates the secret through :mod:`technician_ops.steps.vault.controller` (intent recorded,
then a check-and-set write) and returns the new value in the task result,
marked ``_ansible_no_log``: the step registers the result, so the apply and
verify tasks of the same play read the value from memory.  Ansible censors a
no_log result before any callback sees it, so it reaches neither
ansible-runner's job events nor the console.  It is a registered variable,
not a fact, on purpose: ansible-runner caches facts in JSON files.

Failures are not censored (they carry no value) so the operator sees why.
Under ``--check`` (or ``dry_run: true``) nothing is written.
"""

from __future__ import annotations

from typing import Any

from technician_ops.steps.action import ControllerAction


class ActionModule(ControllerAction):

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from technician_ops.steps.vault import controller as vault_step

        result = super().run(tmp, task_vars)
        args = self._task.args
        step = str(args.get("step", ""))
        secret = str(args.get("secret", ""))

        def emit(data: dict[str, Any]) -> None:

            self.emit(data, vault_step.VaultStepError)

        try:
            generator = vault_step.Generator.from_args(args)
            if args.get("dry_run") or self._task.check_mode or self._play_context.check_mode:
                record = vault_step.dry_run(step, secret, generator, emit)
                result.update(changed=False, dry_run=True, msg=(
                    f"dry run: would write {record['path']}#{record['key']} version "
                    f"{record['new_version']} (now at {record['old_version']})"))
                return result
            rotation = vault_step.rotate(step, secret, generator, emit)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a failed task
            result.update(failed=True, msg=vault_step.describe(exc), technician_ops_tempfail=vault_step.is_tempfail(exc))
            return result
        assert rotation.new_value is not None
        result.update(
            changed=True,
            value=rotation.new_value.reveal(),
            old_version=rotation.old_version,
            new_version=rotation.new_version,
            _ansible_no_log=True,
        )
        return result
