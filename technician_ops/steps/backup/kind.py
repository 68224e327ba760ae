"""``backup``: take a verified backup on each of the step's hosts; its undo restores it.

Body, one of::

    paths: [/etc/app, "{{ state_dir }}/conf"]     # files/dirs on the step's hosts

    postgres: {database: app, host: /run/postgresql, port: 5432, user: backup}

Files: ``remote_backup.py`` archives the paths on the host into a
private temp dir, ``fetch`` brings the archive to
``<state_dir>/backups/<run_id>/<host>/<step>.tar`` and the controller-side
``technician_ops_backup_record`` action checks its sha256 against the one
the host computed, registers it and puts an ``artifact`` event (type
``backup``: path, sha256, size -- never content) in the audit record.  A
backup that does not verify fails the step, so nothing after it runs.

PostgreSQL: ``pg_dump -Fc`` runs on the controller (libpq settings from the
spec; no password key -- use ~/.pgpass) and is verified by reading it back
in full before the step succeeds.

Undo (registered automatically, run during a rollback on the hosts the step
ran on): the stored artefact is checked against its recorded sha256 on the
controller, shipped back and restored by ``remote_backup.py restore``, which
replaces each backed-up root whole -- content, modes, and files added since
disappear.  A PostgreSQL dump is restored with ``pg_restore --clean
--if-exists`` in one transaction.  A corrupted artefact is refused (the undo
fails, the run ends ``rollback_failed``), never half-restored.

In ``--check`` nothing is archived: the step only says what it would back up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Runbook, Step
from technician_ops.state import StepState
from technician_ops.steps.base import BodyError, CompileContext, PastRun, StepKind, load_yaml_body

REMOTE_SCRIPT = Path(__file__).resolve().parent / "remote_backup.py"
_PG_KEYS = {"database", "host", "port", "user"}
# Registered variables of the generated tasks; prefixed so they never meet a runbook's own.
_TMP = "technician_ops_backup_tmp"
_CREATED = "technician_ops_backup_created"
_DEST = "technician_ops_backup_dest"
_SOURCE = "technician_ops_backup_source"
_RESTORED = "technician_ops_backup_restored"
_PYTHON = ("{{ ansible_python_interpreter | default(ansible_facts.discovered_interpreter_python)"
           " | default('/usr/bin/python3') }}")


class BackupKind(StepKind):
    name = "backup"
    runs_on_nodes = False
    quiet = True
    mutating = True
    auto_undo = True

    def undo_hosts(self, step: Step, state: StepState, *, failed: bool) -> list[str]:
        """The hosts with a verified backup: restoring one is exact, and a host without one has nothing
        of this step's to undo (a backup changes none of the paths it copies)."""
        return state.done_hosts

    # -- run-time hooks ------------------------------------------------------------
    def after_run(self, runbook: Runbook, state_dir: Path, keep: int) -> list[str]:
        """Retention: the backups of the newest ``keep`` runs of this runbook stay."""
        if not (state_dir / "backups").exists():
            return []
        from technician_ops.errors import TechnicianOpsError
        from technician_ops.steps.backup.controller import prune_backups

        try:
            prune_backups(state_dir, runbook.name, int(runbook.meta.get("keep_backups") or keep))
        except TechnicianOpsError as exc:
            return [f"backup retention: {exc.message}"]
        return []

    def check_undo_of_past_run(self, past: PastRun, items: list[tuple[Any, list[str]]]) -> list[tuple[Any, list[str]]]:
        from technician_ops.steps.backup.controller import check_past_backups

        return check_past_backups(past, items)

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        spec = load_yaml_body(body)
        if not isinstance(spec, dict) or len({"paths", "postgres"} & set(spec)) != 1:
            raise BodyError("backup step body must be a mapping with either 'paths: [...]' "
                            "or 'postgres: {database: NAME}'")
        unknown = set(spec) - {"paths", "postgres"}
        if unknown:
            raise BodyError(f"unknown key(s) in backup step: {', '.join(sorted(unknown))} (allowed: paths, postgres)")
        if "paths" in spec:
            paths = spec["paths"]
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
                raise BodyError("backup 'paths' must be a non-empty list of file or directory paths")
            if any(not (p.startswith("/") or p.startswith("{{")) for p in paths):
                raise BodyError("backup 'paths' must be absolute (a restore puts them back exactly where they were)")
            return {"paths": list(paths)}
        pg = spec["postgres"]
        if isinstance(pg, str):
            pg = {"database": pg}
        if not isinstance(pg, dict) or not pg.get("database"):
            raise BodyError("backup 'postgres' must be a mapping with at least 'database'")
        extra = set(pg) - _PG_KEYS
        if extra:
            hint = " (passwords never go in a runbook: use ~/.pgpass on the controller)" if "password" in extra else ""
            raise BodyError(f"unknown key(s) in backup 'postgres': {', '.join(sorted(extra))}"
                            f" (allowed: {', '.join(sorted(_PG_KEYS))}){hint}")
        return {"postgres": {k: v for k, v in pg.items() if v is not None}}

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        spec = step.spec
        what = ", ".join(spec["paths"]) if "paths" in spec else f"database {spec['postgres']['database']}"
        if ctx.check:
            return [{"name": f"backup: {step.name} (not taken in --check)",
                     "ansible.builtin.debug": {"msg": f"would back up {what}"}}]
        common = {"step": step.name, "runbook": ctx.runbook.name}
        if "postgres" in spec:
            return [{"name": f"backup: pg_dump of {spec['postgres']['database']}",
                     "technician_ops_backup_record": {**common, "source": "postgres", "postgres": dict(spec["postgres"])}}]
        archive = "{{ %s.path }}/archive.tar" % _TMP
        helper = "{{ %s.path }}/remote_backup.py" % _TMP
        return [
            _temp_dir(),
            {
                "name": f"backup: {what}",
                "block": [
                    _ship_helper(helper),
                    {"name": "backup: archive on the host",
                     "ansible.builtin.command": {"argv": [_PYTHON, helper, "create", "--out", archive, *spec["paths"]]},
                     "register": _CREATED, "changed_when": False, "failed_when": False},
                    {"name": "backup: check the archive was made",
                     "technician_ops_backup_record": {**common, "source": "files", "phase": "created",
                                                      "rc": "{{ %s.rc }}" % _CREATED,
                                                      "stdout": "{{ %s.stdout }}" % _CREATED},
                     "register": _DEST},
                    {"name": "backup: fetch to the controller",
                     "ansible.builtin.fetch": {"src": archive, "dest": "{{ %s.path }}" % _DEST, "flat": True}},
                    {"name": "backup: verify sha256 and record",
                     "technician_ops_backup_record": {**common, "source": "files", "phase": "record",
                                                      "sha256": "{{ %s.sha256 }}" % _DEST,
                                                      "roots": "{{ %s.roots }}" % _DEST}},
                ],
                "always": [_remove_temp_dir()],
            },
        ]

    def undo_tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        spec = step.spec
        common = {"step": step.name}
        if "postgres" in spec:
            return [{"name": f"restore: pg_restore --clean into {spec['postgres']['database']}",
                     "technician_ops_backup_restore": {**common, "source": "postgres", "postgres": dict(spec["postgres"])}}]
        archive = "{{ %s.path }}/archive.tar" % _TMP
        helper = "{{ %s.path }}/remote_backup.py" % _TMP
        return [
            {"name": "restore: check the stored archive against its recorded sha256",
             "technician_ops_backup_restore": {**common, "source": "files", "phase": "source"},
             "register": _SOURCE},
            _temp_dir(),
            {
                "name": f"restore: {', '.join(spec['paths'])}",
                "block": [
                    _ship_helper(helper),
                    {"name": "restore: ship the archive", "ansible.builtin.copy": {
                        "src": "{{ %s.path }}" % _SOURCE, "dest": archive, "mode": "0600"}},
                    {"name": "restore: put the files back",
                     "ansible.builtin.command": {"argv": [_PYTHON, helper, "restore", "--archive", archive,
                                                          "--sha256", "{{ %s.sha256 }}" % _SOURCE]},
                     "register": _RESTORED, "failed_when": False},
                    {"name": "restore: check the result",
                     "technician_ops_backup_restore": {**common, "source": "files", "phase": "restored",
                                                       "rc": "{{ %s.rc }}" % _RESTORED,
                                                       "stdout": "{{ %s.stdout }}" % _RESTORED}},
                ],
                "always": [_remove_temp_dir()],
            },
        ]


def _temp_dir() -> dict[str, Any]:
    return {"name": "backup: private temp dir on the host",
            "ansible.builtin.tempfile": {"state": "directory", "prefix": "techops-backup-"}, "register": _TMP}


def _remove_temp_dir() -> dict[str, Any]:
    return {"name": "backup: remove the temp dir", "ansible.builtin.file": {"path": "{{ %s.path }}" % _TMP, "state": "absent"},
            "when": "%s.path is defined" % _TMP}


def _ship_helper(dest: str) -> dict[str, Any]:
    return {"name": "backup: ship the helper script",
            "ansible.builtin.copy": {"src": str(REMOTE_SCRIPT), "dest": dest, "mode": "0700"}}


KIND = BackupKind()
