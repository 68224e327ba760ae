"""Action plugin: the controller side of a ``backup`` step (see kinds/backup.py).

Runs on the controller for each of the step's hosts, without a connection.
Phases of a files backup: ``created`` reads the host helper's result and
prepares the private store directory the archive is fetched into;
``record`` checks the fetched bytes against the host's sha256, registers
the artefact and adds the ``backup`` artifact event.  ``source: postgres``
dumps the database on the controller, verifies and records the dump.
"""

from __future__ import annotations

from typing import Any

from technician_ops.steps.action import ControllerAction


class ActionModule(ControllerAction):

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from technician_ops.steps.backup import controller as backup_steps
        from technician_ops.steps.backup.store import interpret_remote_result
        from technician_ops.steps.action import NOT_UNDER_RUN, call, run_context
        from technician_ops.errors import TechnicianOpsError

        result: dict[str, Any] = super().run(tmp, task_vars)
        args = self._task.args
        step, source, phase = str(args["step"]), str(args.get("source", "files")), str(args.get("phase", "record"))
        context = run_context()
        if context is None:
            result.update(failed=True, msg=NOT_UNDER_RUN)
            return result
        (state_dir, run_id), host = context, str((task_vars or {})["inventory_hostname"])
        try:
            if source == "files" and phase == "created":
                remote = interpret_remote_result(int(args.get("rc", 1)), str(args.get("stdout", "")), host)
                dest = backup_steps.prepare_destination(state_dir, run_id, host, step, "files")
                result.update(changed=False, path=str(dest), sha256=remote["sha256"], roots=remote.get("roots", []))
                return result
            if source == "files":
                record = backup_steps.record_files(state_dir, run_id, host, step, runbook=str(args["runbook"]),
                                                   sha256=str(args["sha256"]), roots=args.get("roots") or [])
            elif source == "postgres":
                record = backup_steps.dump_postgres(state_dir, run_id, host, step, runbook=str(args["runbook"]),
                                                    spec=dict(args["postgres"]))
            else:
                raise ValueError(f"unknown backup source {source!r}")
        except TechnicianOpsError as exc:
            hint = f" ({exc.hint})" if getattr(exc, "hint", None) else ""
            result.update(failed=True, msg=f"backup {step} of this host failed: {exc.message}{hint}")
            return result
        artifact = {"type": "backup", "step": step, "host": host, "source": source, "path": record.path,
                    "sha256": record.sha256, "size": record.size,
                    "summary": f"{host} {record.name} sha256 {record.sha256[:12]} ({record.size} bytes)"}
        reply = call("emit", kind="artifact", data=artifact)
        if not reply.get("ok"):
            result.update(failed=True, msg=f"backup {step} taken but not recorded: {reply.get('error')}")
            return result
        result.update(changed=True, msg=f"backup {record.name} verified: sha256 {record.sha256}", **artifact)
        return result
