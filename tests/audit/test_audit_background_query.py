"""The SQLite store's second-connection query that ``verify`` runs beside its own walk."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from technician_ops.audit.sqlite import _BackgroundQuery

ENDLESS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"


@pytest.fixture
def db(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "q.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);")
    conn.close()
    return path


def test_result_returns_the_rows(db: pathlib.Path) -> None:
    assert _BackgroundQuery(db, "SELECT v FROM t WHERE v >= ? ORDER BY v", (2,)).result() == [(2,), (3,)]


def test_result_raises_the_statement_error(db: pathlib.Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _BackgroundQuery(db, "SELECT * FROM missing", ()).result()


def test_cancel_stops_a_statement_that_would_never_end(db: pathlib.Path) -> None:
    query = _BackgroundQuery(db, ENDLESS, ())
    query.cancel()  # returns only once the thread is gone
    assert not query._thread.is_alive()
    with pytest.raises(sqlite3.ProgrammingError):  # and its connection is closed
        query._conn.execute("SELECT 1")
