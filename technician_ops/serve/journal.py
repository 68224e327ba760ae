"""The server's journal: what it accepted and decided, on disk before it answers.

One file, ``STATE_DIR/serve/journal.jsonl`` (directory 0700, file 0600), of JSON
lines appended with ``O_APPEND`` and fsync'd before the webhook gets its 202:

    {"t": "job", "id": ID, "at": T, "key": KEY, "job": {...}}   an alert accepted: run, hold or refuse it
    {"t": "started", "id": ID, "run_id": RUN}                   its run's id, before the run is started
    {"t": "spawned", "id": ID, "pid": PID, "identity": I}       the run's process (to wait for it after a restart)
    {"t": "done", "id": ID, "outcome": O, "run_id": RUN}        its record is written
    {"t": "seen", "key": KEY, "at": T}                          an alert decided earlier (dedupe)
    {"t": "resolved", "key": KEY, "at": T}                      Alertmanager said it resolved

``KEY`` is the alert's fingerprint and ``startsAt``: a repeated notification
of the same firing has the same key and is not run again, across restarts.
A key is forgotten when its alert resolves, after ``retention`` seconds, or
when more than ``max_keys`` are kept (oldest first).  At start the file is
read (a torn last line from a crash is skipped), every job without ``done``
is returned to be queued again, and the file is rewritten compactly (a temp
file, fsync'd, renamed over it); it is compacted again whenever it has grown
by ``compact_every`` lines.  An exclusive lock on ``journal.lock`` keeps a
second server off the same journal.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ConfigError, StorageError

RETENTION = 30 * 86400.0
MAX_KEYS = 50_000
COMPACT_EVERY = 20_000


@dataclass
class Pending:
    """An accepted job whose record is not written yet."""

    id: str
    at: float
    key: str
    job: dict[str, Any]
    run_id: str | None = None  # set once its run was started
    pid: int | None = None  # its run's process, and that process's identity (``audit.store.process_identity``)
    identity: str | None = None


@dataclass
class Recovered:
    pending: list[Pending] = field(default_factory=list)
    torn: int = 0  # lines that could not be read (a crash mid-write leaves at most one)


class Journal:
    def __init__(self, directory: Path, *, retention: float = RETENTION, max_keys: int = MAX_KEYS,
                 compact_every: int = COMPACT_EVERY) -> None:
        self.directory = directory
        self.path = directory / "journal.jsonl"
        self.retention, self.max_keys, self.compact_every = retention, max_keys, compact_every
        self.pending: dict[str, Pending] = {}
        self.seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._fd = -1
        self._lock_fd = -1
        self._lines = 0

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> Recovered:
        """Take the journal (one server per state dir), read it, compact it; the jobs to queue again."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.directory, 0o700)
            self._lock_fd = os.open(self.directory / "journal.lock",
                                    os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError.from_os(exc, f"open the serve journal in {self.directory}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise ConfigError(f"another 'technician-ops serve' uses {self.directory}",
                              hint="stop it first; one server per project state dir") from None
        recovered = Recovered()
        try:
            recovered.torn = self._read()
            self._rewrite()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.close()
            raise StorageError.from_os(exc, f"open the serve journal {self.path}") from None
        recovered.pending = sorted(self.pending.values(), key=lambda p: p.at)
        return recovered

    def _read(self) -> int:
        torn = 0
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        with os.fdopen(fd, "rb") as fh:
            for raw in fh:
                try:
                    entry = json.loads(raw)
                    if not isinstance(entry, dict):
                        raise ValueError
                    self._apply(entry)
                except (ValueError, KeyError, TypeError):
                    torn += 1
        self._forget_old(time.time())
        return torn

    def _apply(self, entry: dict[str, Any]) -> None:
        kind = entry["t"]
        if kind == "job":
            pending = Pending(str(entry["id"]), float(entry["at"]), str(entry["key"]), dict(entry["job"]))
            self.pending[pending.id] = pending
            self._see(pending.key, pending.at)
        elif kind == "started":
            if entry["id"] in self.pending:
                self.pending[entry["id"]].run_id = str(entry["run_id"])
        elif kind == "spawned":
            if entry["id"] in self.pending:
                self.pending[entry["id"]].pid = int(entry["pid"])
                self.pending[entry["id"]].identity = entry.get("identity")
        elif kind == "done":
            self.pending.pop(entry["id"], None)
        elif kind == "seen":
            self._see(str(entry["key"]), float(entry["at"]))
        elif kind == "resolved":
            self.seen.pop(str(entry["key"]), None)

    def _see(self, key: str, at: float) -> None:
        self.seen[key] = at
        self.seen.move_to_end(key)
        while len(self.seen) > self.max_keys:
            self.seen.popitem(last=False)

    def _forget_old(self, now: float) -> None:
        for key in [k for k, at in self.seen.items() if now - at > self.retention]:
            del self.seen[key]

    def _rewrite(self) -> None:
        """Replace the file with the state it describes: pending jobs, then the keys still remembered."""
        pending_keys = {p.key for p in self.pending.values()}
        lines = []
        for key, at in self.seen.items():
            if key not in pending_keys:
                lines.append(_line({"t": "seen", "key": key, "at": at}))
        for p in sorted(self.pending.values(), key=lambda p: p.at):
            lines.append(_line({"t": "job", "id": p.id, "at": p.at, "key": p.key, "job": p.job}))
            if p.run_id is not None:
                lines.append(_line({"t": "started", "id": p.id, "run_id": p.run_id}))
            if p.pid is not None:
                lines.append(_line({"t": "spawned", "id": p.id, "pid": p.pid, "identity": p.identity}))
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(lines)) if lines else None
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        self._lines = len(lines)

    # -- writing ---------------------------------------------------------------------------

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Write ``entries`` in one write and fsync them, then apply them to the state; raises StorageError."""
        if not entries:
            return
        data = b"".join(_line(e) for e in entries)
        with self._lock:
            if self._fd < 0:
                raise StorageError("the serve journal is closed")
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError as exc:
                raise StorageError.from_os(exc, f"write the serve journal {self.path}") from None
            for entry in entries:
                self._apply(entry)
            self._lines += len(entries)
            if self._lines >= self.compact_every:
                self._compact_locked()

    def _compact_locked(self) -> None:
        self._forget_old(time.time())
        try:
            self._rewrite()
            old, self._fd = self._fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
            os.close(old)
        except OSError:
            pass  # the appended file is still whole and still ours: compact next time

    def is_seen(self, key: str) -> bool:
        with self._lock:
            return key in self.seen

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._lock_fd = -1


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":"), ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
