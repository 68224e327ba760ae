"""The controller side of the ``backup`` step: the backup store and PostgreSQL dumps.

Files and directories are archived *on the host* by ``remote_backup.py``
(shipped there by the generated Ansible tasks) and fetched into the store
kept here: ``.technician-ops/backups/RUN_ID/HOST/NAME``, every directory
0700 and every artefact 0600, because a backup of /etc holds what /etc holds.
Each run directory carries an ``index.json`` (runbook, artefacts, sha256) so
listing and retention work without the audit database; the sha256 also goes
into the audit record (as an ``artifact`` event) via the caller.

PostgreSQL: ``pg_dump -Fc`` into the store, then verified -- the archive's
table of contents must read (``pg_restore --list``) and every data block must
decode (``pg_restore --file=/dev/null``, which reads the whole archive without
touching a database).  ``--list`` alone only reads the TOC at the head of the
file and passes a dump cut short in its data; an unverifiable dump fails the
step.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ExitCode, TechnicianOpsError

#: The host-side script; the lead's compiler ships it with ansible.builtin.script.
REMOTE_SCRIPT = Path(__file__).resolve().parent / "remote_backup.py"
#: Exit code of remote_backup.py for a corrupt / mismatching archive.
REMOTE_EXIT_INTEGRITY = 3

PG_BIN_DIRS: tuple[Path, ...] = (Path("/usr/lib/postgresql/15/bin"),)
"""Searched before PATH so the server's own major version of pg_dump is used."""

INDEX = "index.json"
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_.@:+-]+$")


class BackupError(TechnicianOpsError):
    """A backup could not be taken, stored or restored."""

    exit_code = ExitCode.FAILED


class BackupCorrupted(BackupError):
    """An artefact's bytes differ from the sha256 recorded when it was taken.
    Restoring it would write something other than what was backed up."""

    exit_code = ExitCode.DATAERR


class BackupUnverifiable(BackupError):
    """A freshly taken backup did not pass verification: the step fails,
    because a backup nobody can restore is worse than none (it invites the
    run to continue)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BackupRecord:
    """One artefact in the store; the JSON of it is what the audit record keeps."""

    run_id: str
    host: str
    name: str
    kind: str  # "files" or "postgres"
    path: str
    sha256: str
    size: int
    runbook: str
    created_at: float
    details: dict[str, Any] = field(default_factory=dict)  # e.g. backed-up roots, dbname

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


class BackupStore:
    """``.technician-ops/backups``: artefacts of every run, per host."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout -----------------------------------------------------------

    @staticmethod
    def _component(value: str, what: str) -> str:
        # Names come from inventories and runbooks; they become directory
        # names, so anything that could climb out of the store is refused.
        if not _SAFE_COMPONENT.match(value) or value in (".", ".."):
            raise BackupError(f"invalid {what} for a backup path: {value!r}")
        return value

    def _mkdir_private(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for p in [path, *path.parents]:
            if p == self.root.parent:
                break
            if p.is_relative_to(self.root):
                os.chmod(p, 0o700)  # mkdir's mode is subject to umask; chmod is not

    def run_dir(self, run_id: str) -> Path:
        return self.root / self._component(run_id, "run id")

    def path_for(self, run_id: str, host: str, name: str) -> Path:
        """Where artefact ``name`` of ``host`` in ``run_id`` goes; directories are created 0700."""
        directory = self.run_dir(run_id) / self._component(host, "host")
        self._mkdir_private(directory)
        return directory / self._component(name, "backup name")

    # -- index ------------------------------------------------------------

    def _read_index(self, run_id: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.run_dir(run_id) / INDEX).read_text())
        except FileNotFoundError:
            return {"run_id": run_id, "runbook": None, "created_at": None, "backups": []}
        except (OSError, ValueError) as exc:
            raise BackupError(f"backup index of run {run_id} is unreadable: {exc}") from exc
        return data

    def _write_index(self, run_id: str, data: dict[str, Any]) -> None:
        directory = self.run_dir(run_id)
        self._mkdir_private(directory)
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / INDEX)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def record(
        self,
        run_id: str,
        host: str,
        name: str,
        *,
        runbook: str,
        kind: str,
        sha256: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> BackupRecord:
        """Register an artefact already written at ``path_for(run_id, host, name)``.

        ``sha256`` is the value reported where it was taken (the host); the
        stored bytes are hashed again here and must match, so a transfer
        that corrupted the archive fails the backup step, not the restore.
        """
        path = self.path_for(run_id, host, name)
        if not path.is_file():
            raise BackupError(f"backup artefact {path} does not exist")
        os.chmod(path, 0o600)
        actual = sha256_file(path)
        if sha256 is not None and actual != sha256.lower():
            raise BackupCorrupted(
                f"backup {name} of {host} arrived corrupted: sha256 {actual}, the host reported {sha256}",
                hint="re-run the backup step; check disk space and the connection to the host",
            )
        rec = BackupRecord(
            run_id=run_id,
            host=host,
            name=name,
            kind=kind,
            path=str(path),
            sha256=actual,
            size=path.stat().st_size,
            runbook=runbook,
            created_at=time.time(),
            details=dict(details or {}),
        )
        # Every host's backup is recorded by its own Ansible worker process,
        # at the same moment: the index update is serialised with a file lock.
        with self._index_lock(run_id):
            index = self._read_index(run_id)
            if index.get("runbook") not in (None, runbook):
                raise BackupError(f"run {run_id} already holds backups of runbook {index['runbook']}, not {runbook}")
            index["runbook"] = runbook
            index["created_at"] = index.get("created_at") or rec.created_at
            index["backups"] = [b for b in index["backups"] if (b["host"], b["name"]) != (host, name)]
            index["backups"].append(rec.to_record())
            self._write_index(run_id, index)
        return rec

    @contextlib.contextmanager
    def _index_lock(self, run_id: str) -> Iterator[None]:
        self._mkdir_private(self.run_dir(run_id))
        path = self.run_dir(run_id) / ".index.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def list(self, run_id: str | None = None) -> list[BackupRecord]:
        """Recorded artefacts, of one run or of all runs (oldest run first)."""
        if run_id is not None:
            run_ids: Iterable[str] = [run_id]
        elif self.root.is_dir():
            run_ids = [p.name for p in self.root.iterdir() if (p / INDEX).is_file()]
        else:
            run_ids = []
        records = [BackupRecord(**b) for r in run_ids for b in self._read_index(r)["backups"]]
        return sorted(records, key=lambda b: (b.created_at, b.run_id, b.host, b.name))

    def verify(self, record: BackupRecord) -> None:
        """Refuse an artefact whose bytes changed since it was recorded."""
        path = Path(record.path)
        if not path.is_file():
            raise BackupCorrupted(f"backup {record.name} of {record.host} (run {record.run_id}) is missing: {path}")
        actual = sha256_file(path)
        if actual != record.sha256:
            raise BackupCorrupted(
                f"backup {record.name} of {record.host} (run {record.run_id}) is corrupted: "
                f"sha256 {actual}, recorded {record.sha256}",
                hint="do not restore from it; pick an older run's backup (`technician-ops show RUN`)",
            )

    def prune(self, runbook: str, keep: int, order: Sequence[str] | None = None) -> builtins.list[str]:
        """Keep the backups of the last ``keep`` runs of ``runbook``; return the run ids removed.

        ``order`` is the caller's list of run ids, oldest first (from the
        audit store, which knows the true run order); without it the runs
        are ordered by when their first backup was recorded.  Runs of other
        runbooks are never touched.
        """
        if keep < 0:
            raise BackupError(f"retention must keep 0 or more runs, not {keep}")
        mine: dict[str, float] = {}
        if self.root.is_dir():
            for p in self.root.iterdir():
                if (p / INDEX).is_file():
                    index = self._read_index(p.name)
                    if index.get("runbook") == runbook:
                        mine[p.name] = float(index.get("created_at") or 0)
        if order is not None:
            position = {run_id: i for i, run_id in enumerate(order)}
            # Runs the caller does not know about are kept: not ours to judge.
            ordered = sorted((r for r in mine if r in position), key=position.__getitem__)
        else:
            ordered = sorted(mine, key=lambda r: (mine[r], r))
        doomed = ordered[: max(len(ordered) - keep, 0)]
        for run_id in doomed:
            shutil.rmtree(self.run_dir(run_id))
        return doomed


# ---------------------------------------------------------------------------
# host-side script results


def interpret_remote_result(returncode: int, stdout: str, host: str) -> dict[str, Any]:
    """Turn remote_backup.py's exit code and JSON line into data or our errors."""
    try:
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BackupError(f"backup helper on {host} gave no result (exit {returncode})") from None
    if returncode == REMOTE_EXIT_INTEGRITY:
        raise BackupCorrupted(f"{host}: {result.get('error')}", hint="the archive does not match its recorded sha256")
    if returncode != 0 or not result.get("ok"):
        raise BackupError(f"{host}: backup helper failed (exit {returncode}): {result.get('error')}")
    return result


# ---------------------------------------------------------------------------
# PostgreSQL


def pg_binary(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found in {', '.join(map(str, PG_BIN_DIRS))} or on PATH")
    return found


def _pg_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """libpq reads PGHOST/PGPORT/PGUSER/PGPASSWORD from here; the password
    never goes on a command line, where ps would show it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    base.update(env or {})
    return base


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def pg_dump(dbname: str, out: Path, env: Mapping[str, str] | None = None, timeout: float = 3600) -> str:
    """``pg_dump -Fc`` of ``dbname`` into ``out`` (0600), verified; returns its sha256.

    Connection settings come from ``env`` (PGHOST, PGPORT, PGUSER, PGPASSWORD,
    ...).  ``dbname`` may be a database name or a conninfo string without a
    password.  A dump that fails verification is deleted and the step fails.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    command = [pg_binary("pg_dump"), "--format=custom", "--no-password", f"--file={partial}", f"--dbname={dbname}"]
    try:
        proc = subprocess.run(
            command, env=_pg_env(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump of {dbname} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(
            f"pg_dump of database {dbname} failed (exit {proc.returncode})\n{_tail(proc.stderr)}",
            hint="check that the database is reachable and the backup role may read every table",
        )
    try:
        verify_pg_dump(partial)
    except BackupUnverifiable:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return sha256_file(out)


def verify_pg_dump(path: Path) -> int:
    """Check a custom-format dump is restorable; return its number of TOC entries."""
    path = Path(path)
    pg_restore = pg_binary("pg_restore")
    listing = subprocess.run([pg_restore, "--list", str(path)], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        raise BackupUnverifiable(f"dump {path} is not a readable pg_dump archive\n{_tail(listing.stderr)}")
    # Reading every data block (into /dev/null, no database involved) is what
    # catches a dump whose data was cut short: the TOC alone still lists.
    full = subprocess.run(
        [pg_restore, "--file=/dev/null", str(path)], capture_output=True, text=True, check=False
    )
    if full.returncode != 0 or full.stderr.strip():
        raise BackupUnverifiable(f"dump {path} is damaged: its data does not read back\n{_tail(full.stderr)}")
    return sum(1 for line in listing.stdout.splitlines() if line and not line.startswith(";"))
