"""Controller-side work of the ``backup`` step, called by its action plugins.

The step kind (``kind.py``) compiles to Ansible tasks; the parts that
must happen on the controller -- registering a fetched archive in the
:class:`~technician_ops.steps.backup.store.BackupStore`, dumping and restoring
PostgreSQL, checking a stored artefact before it is shipped back for a
restore, retention -- live here, as plain functions, so they are testable
without Ansible and the action plugins stay thin.

Where things are: ``<state_dir>/backups/<run_id>/<host>/<step>.tar`` for
files and directories (archived on the host by ``remote_backup.py``),
``<step>.dump`` for a PostgreSQL database (``pg_dump -Fc``).  Every
directory is 0700, every artefact 0600 (BackupStore's layout).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from technician_ops.steps.backup.store import (
    BackupCorrupted,
    BackupError,
    BackupRecord,
    BackupStore,
    _pg_env,
    _tail,
    pg_binary,
    pg_dump,
    sha256_file,
    verify_pg_dump,
)

FILES_SUFFIX = ".tar"
POSTGRES_SUFFIX = ".dump"


def store_for(state_dir: Path) -> BackupStore:
    return BackupStore(Path(state_dir) / "backups")


def artefact_name(step: str, source: str) -> str:
    """The file name of a step's artefact: the step name plus the format's suffix."""
    return step + (POSTGRES_SUFFIX if source == "postgres" else FILES_SUFFIX)


def prepare_destination(state_dir: Path, run_id: str, host: str, step: str, source: str = "files") -> Path:
    """Create ``backups/<run_id>/<host>/`` (0700) and return the artefact path.

    Called before ``fetch`` writes there, so the archive never sits in a
    directory other users can read, not even for the moment between the
    fetch and the record.
    """
    return store_for(state_dir).path_for(run_id, host, artefact_name(step, source))


def record_files(state_dir: Path, run_id: str, host: str, step: str, *, runbook: str, sha256: str,
                 roots: Sequence[Any] = ()) -> BackupRecord:
    """Register a fetched archive; its bytes must hash to what the host reported."""
    return store_for(state_dir).record(run_id, host, artefact_name(step, "files"), runbook=runbook, kind="files",
                                       sha256=sha256, details={"roots": list(roots)})


def postgres_env(spec: Mapping[str, Any]) -> dict[str, str]:
    """libpq settings of a ``postgres:`` spec.  Unset keys fall back to libpq's defaults.

    There is deliberately no password key: a password in a runbook would be
    written to the compiled playbook.  Use ~/.pgpass (or PGPASSFILE) on the
    controller, or trust/peer authentication.
    """
    env: dict[str, str] = {}
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        value = spec.get(key)
        if value not in (None, ""):
            env[var] = str(value)
    return env


def dump_postgres(state_dir: Path, run_id: str, host: str, step: str, *, runbook: str,
                  spec: Mapping[str, Any]) -> BackupRecord:
    """``pg_dump -Fc`` of ``spec['database']`` into the store, verified, recorded."""
    store = store_for(state_dir)
    name = artefact_name(step, "postgres")
    path = store.path_for(run_id, host, name)
    database = str(spec["database"])
    digest = pg_dump(database, path, env=postgres_env(spec))
    details = {"database": database, **{k: str(spec[k]) for k in ("host", "port", "user") if spec.get(k) not in (None, "")}}
    return store.record(run_id, host, name, runbook=runbook, kind="postgres", sha256=digest, details=details)


def stored(state_dir: Path, run_id: str, host: str, step: str, source: str) -> BackupRecord:
    """The recorded artefact of a step on a host, checked against its recorded sha256.

    Raises :class:`BackupCorrupted` when the bytes changed since the backup
    was taken: a restore from it would write something else than what was
    backed up, so nothing is restored.
    """
    store = store_for(state_dir)
    name = artefact_name(step, source)
    matches = [r for r in store.list(run_id) if r.host == host and r.name == name]
    if not matches:
        raise BackupError(f"run {run_id} recorded no backup {name} of {host}: nothing to restore from",
                          hint=f"look in {store.run_dir(run_id)}; restore by hand from an older run if needed")
    record = matches[-1]
    store.verify(record)
    return record


def restore_postgres(record: BackupRecord, spec: Mapping[str, Any], timeout: float = 3600) -> None:
    """Restore a verified dump into ``spec['database']`` with ``pg_restore --clean``.

    ``--clean --if-exists`` drops each object the dump holds before
    recreating it, inside one transaction: the database ends up with the
    dumped objects and rows.  Objects created *after* the dump that the dump
    does not know are left alone (a database-level restore would need
    DROP DATABASE, which an undo must not do behind the operator's back).
    """
    if sha256_file(Path(record.path)) != record.sha256:
        raise BackupCorrupted(f"backup {record.name} of {record.host} changed since it was verified")
    verify_pg_dump(Path(record.path))
    command = [pg_binary("pg_restore"), "--clean", "--if-exists", "--single-transaction", "--no-password",
               "--exit-on-error", f"--dbname={spec['database']}", record.path]
    try:
        proc = subprocess.run(command, env=_pg_env(postgres_env(spec)), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BackupError(f"pg_restore into {spec['database']} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise BackupError(f"pg_restore of {record.name} into database {spec['database']} failed "
                          f"(exit {proc.returncode}); the transaction was rolled back\n{_tail(proc.stderr)}",
                          hint=f"restore by hand: pg_restore --clean --if-exists -d {spec['database']} {record.path}")


def prune_backups(project_state_dir: Path, runbook: str, keep: int, order: Sequence[str] | None = None) -> list[str]:
    """Retention: keep the backups of the newest ``keep`` runs of ``runbook``.

    Meant to be called once a run has ended (by the run flow, with the
    project's ``keep_backups``), never during a run: a run's own backups are
    its undo data.  ``order`` is the run ids oldest first, when the caller
    knows them (the audit store); returns the run ids whose backups were
    removed.
    """
    return store_for(project_state_dir).prune(runbook, keep, order)


# -- what undoing an earlier run may restore from ------------------------------------------


@dataclass(frozen=True)
class BackupEntry:
    """One stored artefact, and whether it still matches its recorded sha256."""

    run_id: str
    runbook: str
    host: str
    step: str
    kind: str  # "files" or "postgres"
    path: str
    sha256: str
    size: int
    created_at: float
    status: str  # "ok", "missing" or "corrupted"


def list_backups(state_dir: Path, run_id: str | None = None, *, verify: bool = True) -> list[BackupEntry]:
    """Backups of one run (a unique run id prefix is enough) or of every run, oldest first.

    ``verify`` re-hashes every artefact, so the listing says which backups a
    rollback could actually restore from.
    """
    store = store_for(state_dir)
    wanted = _backup_run_id(store.root, run_id) if run_id else None
    out = []
    for rec in store.list(wanted):
        status = "ok"
        if verify:
            try:
                store.verify(rec)
            except BackupError:
                status = "missing" if not Path(rec.path).is_file() else "corrupted"
        step = rec.name.rsplit(".", 1)[0]
        out.append(BackupEntry(rec.run_id, rec.runbook, rec.host, step, rec.kind, rec.path, rec.sha256, rec.size,
                               rec.created_at, status))
    return out


def _backup_run_id(root: Path, prefix: str) -> str:
    from technician_ops.errors import NotFound

    key = prefix.strip().lower()
    runs = sorted(p.name for p in root.iterdir() if p.name.startswith(key)) if root.is_dir() else []
    if key in runs:
        return key
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise NotFound(f"no backups of run {prefix!r} in {root}", hint="'technician-ops backups list' shows every run's")
    raise NotFound(f"run id prefix {prefix!r} is ambiguous", hint="type more characters of the run id")


def check_past_backups(past: Any, items: list[tuple[Any, list[str]]]) -> list[tuple[Any, list[str]]]:
    """Every backup an undo of ``past`` restores from exists and hashes to what the audit record says.

    ``recover``: a host whose backup the killed run never recorded has nothing to restore.
    """
    from technician_ops.errors import PastRunError

    recorded = {(a.get("step"), a.get("host")): a for a in past.record.get("artifacts", {}).get("backup", [])}
    problems = []
    keep: list[tuple[Any, list[str]]] = []
    for ps, hosts in items:
        source = "postgres" if "postgres" in ps.step.spec else "files"
        with_backup = []
        for host in hosts:
            art = recorded.get((ps.name, host))
            if art is None:
                if past.action == "recover":
                    continue
                problems.append(f"{host}: the record has no backup of step {ps.name}")
                continue
            try:
                rec = stored(past.state_dir, past.run_id, host, ps.name, source)
            except BackupError as exc:
                problems.append(f"{host}: {exc.message}")
                continue
            if rec.sha256 != art.get("sha256"):
                problems.append(f"{host}: backup {artefact_name(ps.name, source)} has sha256 {rec.sha256}, "
                                f"the audit record says {art.get('sha256')}")
                continue
            with_backup.append(host)
        if with_backup:
            keep.append((ps, with_backup))
    if problems:
        raise PastRunError(f"run {past.run_id} cannot be undone: its backups are missing or corrupted:\n  "
                           + "\n  ".join(problems), hint="nothing was changed; restore by hand from an older backup")
    return keep
