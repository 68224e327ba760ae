"""Action plugin: the controller side of a ``backup`` step's undo (see kinds/backup.py).

``source: files``: phase ``source`` checks the stored archive against the
sha256 recorded when it was taken and returns where it is (the tasks then
ship it and run the host helper's restore); phase ``restored`` turns the
helper's result into success or a clear failure.  ``source: postgres``
restores the dump with ``pg_restore --clean`` from here.
"""

from __future__ import annotations

from typing import Any

from technician_ops.steps.action import ControllerAction


class ActionModule(ControllerAction):

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from technician_ops.steps.backup import controller as backup_steps
        from technician_ops.steps.backup.store import BackupCorrupted, interpret_remote_result
        from technician_ops.steps.action import NOT_UNDER_RUN, call, run_context
        from technician_ops.errors import TechnicianOpsError

        result: dict[str, Any] = super().run(tmp, task_vars)
        args = self._task.args
        step, source, phase = str(args["step"]), str(args.get("source", "files")), str(args.get("phase", "restore"))
        host = str((task_vars or {})["inventory_hostname"])
        context = run_context()
        if context is None:
            result.update(failed=True, msg=NOT_UNDER_RUN)
            return result
        state_dir, run_id = context
        try:
            if source == "files" and phase == "restored":
                remote = interpret_remote_result(int(args.get("rc", 1)), str(args.get("stdout", "")), host)
                call("emit", kind="artifact", data={"type": "backup_restored", "step": step, "host": host,
                                                    "sha256": remote.get("sha256"), "roots": remote.get("roots", []),
                                                    "summary": f"{host} restored from {step}"})
                result.update(changed=True, msg=f"restored from backup {step}", roots=remote.get("roots", []))
                return result
            record = backup_steps.stored(state_dir, run_id, host, step, source)
            if source == "files":
                result.update(changed=False, path=record.path, sha256=record.sha256)
                return result
            if source != "postgres":
                raise ValueError(f"unknown backup source {source!r}")
            backup_steps.restore_postgres(record, dict(args["postgres"]))
            call("emit", kind="artifact", data={"type": "backup_restored", "step": step, "host": host,
                                                "sha256": record.sha256, "database": str(args["postgres"]["database"]),
                                                "summary": f"{host} database restored from {record.name}"})
            result.update(changed=True, msg=f"database {args['postgres']['database']} restored from {record.name}")
        except TechnicianOpsError as exc:
            hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
            verb = "refused" if isinstance(exc, BackupCorrupted) else "failed"
            result.update(failed=True, msg=f"restore of backup {step} {verb}: {exc.message}{hint}")
        return result
