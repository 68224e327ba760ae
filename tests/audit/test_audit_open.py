"""Opening stores: URL forms, file modes, clear errors that never leak a password."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from technician_ops.audit import default_path, open_store
from technician_ops.errors import AuditError

from tests.audit.helpers import finished_run
from tests.support.pgserver import PgServer, free_port


def _mode(p: pathlib.Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_default_sqlite_is_private_even_with_a_permissive_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        store = open_store(None, tmp_path)
        finished_run(store)
    finally:
        os.umask(old)
    try:
        db = default_path(tmp_path)
        assert _mode(db.parent) == 0o700
        for suffix in ("", "-wal", "-shm"):
            p = pathlib.Path(str(db) + suffix)
            assert p.exists(), p
            assert _mode(p) == 0o600, (p, oct(_mode(p)))
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore[attr-defined]
        sync = store._conn.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore[attr-defined]
        assert (mode, sync) == ("wal", 2)  # 2 == FULL
    finally:
        store.close()


def test_existing_loose_file_modes_are_tightened(tmp_path: pathlib.Path) -> None:
    open_store(None, tmp_path).close()
    db = default_path(tmp_path)
    os.chmod(db, 0o644)
    open_store(None, tmp_path).close()
    assert _mode(db) == 0o600


def test_sqlite_url_with_absolute_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "elsewhere" / "audit.db"
    store = open_store(f"sqlite://{path}", tmp_path)
    try:
        finished_run(store)
    finally:
        store.close()
    assert path.is_file() and _mode(path) == 0o600
    assert not default_path(tmp_path).exists()
    reopened = open_store(f"sqlite://{path}", tmp_path)
    try:
        assert reopened.verify().checked == 1
    finally:
        reopened.close()


@pytest.mark.parametrize("url, message", [
    ("sqlite://relative.db", "absolute"),
    ("mysql://db/x", "unsupported"),
    ("/just/a/path.db", "unsupported"),
])
def test_bad_urls_are_clear_errors(tmp_path: pathlib.Path, url: str, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        open_store(url, tmp_path)


def test_not_a_database_is_an_audit_error(tmp_path: pathlib.Path) -> None:
    db = default_path(tmp_path)
    db.parent.mkdir(mode=0o700)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditError, match="cannot open audit store"):
        open_store(None, tmp_path)


def test_unreachable_postgres_is_an_audit_error_without_the_password() -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://auditor:s3cr3t-pw@127.0.0.1:{free_port()}/audit?connect_timeout=2"
    with pytest.raises(AuditError) as info:
        open_store(url, pathlib.Path("."))
    text = str(info.value) + str(info.value.hint) + repr(info.value.__cause__)
    assert "s3cr3t-pw" not in text
    assert "auditor:***@127.0.0.1" in text


def test_postgres_store_in_a_fresh_database(pg_server: PgServer, tmp_path: pathlib.Path) -> None:
    url = pg_server.create_database("audit_fresh")
    store = open_store(url, tmp_path)
    try:
        finished_run(store)
        assert store.verify().ok
    finally:
        store.close()
    assert not default_path(tmp_path).exists()


def test_a_store_another_process_is_creating_is_not_taken_for_erased(tmp_path: pathlib.Path) -> None:
    """A new store's file is 0 bytes for a moment: a reader opening it then waits for it instead of
    calling it erased; an old 0-byte store is erased."""
    import threading
    import time

    from technician_ops.audit.sqlite import CREATING_S, SqliteStore
    from technician_ops.errors import AuditTampered

    path = tmp_path / "state" / "audit.db"
    path.parent.mkdir(mode=0o700)
    path.touch(mode=0o600)  # what the creating process has done so far
    done = tmp_path / "other.db"
    SqliteStore(done).close()

    def finish_creating() -> None:
        time.sleep(0.3)
        os.replace(done, path)  # (its first write lands)

    writer = threading.Thread(target=finish_creating)
    writer.start()
    store = SqliteStore(path)
    writer.join()
    assert store.verify().ok
    store.close()
    old = tmp_path / "old" / "audit.db"
    old.parent.mkdir(mode=0o700)
    old.touch(mode=0o600)
    os.utime(old, (time.time() - CREATING_S - 60,) * 2)
    started = time.monotonic()
    with pytest.raises(AuditTampered, match="0 bytes"):
        SqliteStore(old)
    assert time.monotonic() - started < 1  # an old empty store is judged at once
