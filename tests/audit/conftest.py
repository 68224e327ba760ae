"""Fixtures for the audit store tests: every store test runs against SQLite AND PostgreSQL.

PostgreSQL is a real server (``tests/support/pgserver.py``) started once per
session on a loopback port; each test gets its own schema in one database
(``search_path`` in the URL), which is much faster than a database per test.
"""

from __future__ import annotations

import pathlib
import sqlite3
import uuid
from typing import Any, Iterator

import pytest

from technician_ops.audit import AuditStore, default_path, open_store
from tests.support.pgserver import PgServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if not PgServer.available():
        pytest.skip("PostgreSQL server binaries not found (apt-get install -y postgresql-15)")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed")
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_audit_url(pg_server: PgServer) -> str:
    return pg_server.create_database("audit_tests")


class Backend:
    """One store location plus raw SQL access to it (for the tampering tests)."""

    def __init__(self, name: str, url: str | None, project_root: pathlib.Path) -> None:
        self.name = name
        self.url = url
        self.project_root = project_root
        self._stores: list[AuditStore] = []

    def open(self) -> AuditStore:
        store = open_store(self.url, self.project_root)
        self._stores.append(store)
        return store

    def raw(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL directly against the database, bypassing the store (as an attacker would)."""
        if self.name == "sqlite":
            conn = sqlite3.connect(str(default_path(self.project_root)), isolation_level=None)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as pconn:
            cur = pconn.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        for store in self._stores:
            try:
                store.close()
            except Exception:
                pass


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend("sqlite", None, tmp_path)
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        base = request.getfixturevalue("pg_audit_url")
        schema = "t_" + uuid.uuid4().hex[:12]
        with server.connect("audit_tests") as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        b = Backend("postgres", f"{base}?options=-csearch_path%3D{schema}", tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def store(backend: Backend) -> AuditStore:
    return backend.open()
