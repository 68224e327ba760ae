"""Run locks: runs holding one lock name never overlap.

An OS file lock (flock): the kernel drops it when the holder dies, so a
crashed run never leaves a stale lock.  Python opens files non-inheritable:
only the supervisor of each Ansible execution (``supervise.py``) is handed
the descriptor, so the lock is released when the run *and* its execution are
gone, never while a process of the run is still working.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from technician_ops.errors import LockHeld


class RunLock:
    def __init__(self, directory: Path, name: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name = name
        self.path = directory / f"{safe}.lock"
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockHeld(
                        f"lock {self.name!r} is held{holder}: another run of this runbook (or one sharing its lock) is in progress",
                        hint="retry later, or pass --wait-lock SECONDS to wait for it",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def fd(self) -> int:
        """The held lock's descriptor (-1 when not held); whoever inherits it holds the lock too."""
        return -1 if self._fd is None else self._fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode().strip()
        return f" by pid {pid}" if pid.isdigit() else ""
    except OSError:
        return ""
