"""The embedded default store: SQLite in WAL mode with synchronous=FULL.

WAL + FULL makes every committed write durable before ``append_many``
returns (a crash loses nothing that was committed) while keeping a commit to
one WAL append + fsync, whatever the number of events in it, which is what
``AuditSink``'s group commit relies on.  The database and its
``-wal``/``-shm`` companions are private to the user: 0600 in a 0700
directory, because records name hosts, operators and parameters.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from technician_ops.errors import AuditError, AuditTampered

from technician_ops.audit.store import AuditStore, BackgroundQuery

BUSY_TIMEOUT_S = 30.0
FILE_MODE = 0o600
DIR_MODE = 0o700


def _private_dir(path: pathlib.Path) -> None:
    if not path.exists():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask


def _private_file(path: pathlib.Path) -> None:
    """Create the file 0600 before SQLite does, so it is never briefly world-readable.

    SQLite creates ``-wal`` and ``-shm`` with the database file's mode.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        os.close(fd)
    except FileExistsError:
        pass


def _tighten(path: pathlib.Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = pathlib.Path(str(path) + suffix)
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(p, FILE_MODE)


class _BackgroundQuery:
    """One read-only statement on a connection of its own, in a thread.

    sqlite3 lets go of the GIL while a statement steps, so a statement that
    does its work before its first row (a scan with a selective WHERE) runs
    beside Python code on the other core.
    """

    def __init__(self, path: pathlib.Path, sql: str, params: Sequence[Any]) -> None:
        self._conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)
        self._cancelled = threading.Event()
        self._rows: list[tuple[Any, ...]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sql, tuple(params)),
                                        name="technician-ops-audit-query", daemon=True)
        self._thread.start()

    def _run(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            if not self._cancelled.is_set():
                self._rows = self._conn.execute(sql, params).fetchall()
        except BaseException as exc:  # handed to result()
            self._error = exc

    def result(self) -> list[tuple[Any, ...]]:
        self._thread.join()
        self._conn.close()
        if self._error is not None:
            raise self._error
        return self._rows

    def cancel(self) -> None:
        self._cancelled.set()
        while self._thread.is_alive():
            # An interrupt that lands before the statement starts is lost: repeat it.
            self._conn.interrupt()
            self._thread.join(0.05)
        self._conn.close()


CREATING_S = 5.0  # a 0-byte store younger than this may be another process creating it right now


def _erased(path: pathlib.Path) -> bool:
    """Whether ``path`` is an emptied store: 0 bytes, and not one another process is creating (a new store
    is 0 bytes between its file's creation and its first write: wait, while it is that young, for it to grow)."""
    deadline = time.monotonic() + CREATING_S
    while True:
        try:
            st = path.stat()
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size > 0:
            return False
        if time.time() - st.st_mtime > CREATING_S or time.monotonic() > deadline:
            return True
        time.sleep(0.05)


class SqliteStore(AuditStore):
    """Audit store in one SQLite file.  Many processes may share it."""

    def __init__(self, path: pathlib.Path, *, private_dir: bool = True, read_only: bool = False) -> None:
        super().__init__()
        self.path = pathlib.Path(path)
        self.location = str(self.path)
        self.read_only = read_only
        if read_only:
            self._open_read_only()
            return
        if _erased(self.path):
            raise AuditTampered(f"audit store {self.path} is 0 bytes: every record was erased",
                                hint="restore it from a backup or an export; 'audit verify --anchor' names "
                                     "the last record it must hold")
        try:
            if private_dir:
                _private_dir(self.path.parent)
            elif not self.path.parent.is_dir():
                raise AuditError(f"cannot open audit store {self.path}: directory {self.path.parent} does not exist")
            _private_file(self.path)
            self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(f"cannot open audit store {self.path}: {exc}",
                             hint="check the path and its permissions, or set another audit URL") from exc
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditError(f"cannot put audit store {self.path} in WAL mode (got {mode!r})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._init_schema()
            _tighten(self.path)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise AuditError(f"cannot open audit store {self.path}: {exc}",
                             hint="is it an SQLite database? restore it from a backup or export") from exc
        except BaseException:
            self._conn.close()
            raise

    def _open_read_only(self) -> None:
        """For reading a store this process may not write (a read-only file, directory or file system):
        ``history``, ``show``, ``verify`` and ``export`` work; nothing is created, reaped or changed."""
        if not self.path.is_file():
            raise AuditError(f"cannot open audit store {self.path}: no such file")
        uri = self.path.resolve().as_uri()
        last: Exception | None = None
        for mode in ("mode=ro", "mode=ro&immutable=1"):  # immutable: no -shm could be made beside it
            try:
                self._conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                self._check_schema_version()
                return
            except sqlite3.Error as exc:
                last = exc
                self._conn.close()
        raise AuditError(f"cannot read audit store {self.path}: {last}",
                         hint="check the path and its permissions") from last

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        cur = self._conn.execute(sql, tuple(params))
        cur.arraysize = 1000
        try:
            while batch := cur.fetchmany():
                yield from batch
        finally:
            cur.close()

    def _start_body_check(self, sql: str, params: Sequence[Any]) -> BackgroundQuery:
        return _BackgroundQuery(self.path, sql, params)

    @contextmanager
    def _write_tx(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: two finishers serialize here
        # instead of both reading the same chain head.
        # A failed COMMIT (disk full, I/O error) can leave the transaction
        # open: roll it back too, or every later BEGIN on this connection fails.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read_tx(self) -> Iterator[None]:
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _close(self) -> None:
        self._conn.close()
