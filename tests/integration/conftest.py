"""Real services for the integration tests: OpenBao and PostgreSQL 15.

* ``bao_server``: ``bao server -dev`` on a free loopback port (session).
* ``pg``: a throwaway PostgreSQL 15 cluster (session).  initdb runs as the
  ``postgres`` user (it refuses root) into a temp dir; the server listens on
  127.0.0.1:<free port>.  TCP logins need a SCRAM password, except the
  superuser's (trust, like a DBA's peer login), so a wrong password really
  fails a login.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pgserver import PgServer


@dataclass(frozen=True)
class Postgres:
    port: int
    admin: str
    log: Path
    host: str = "127.0.0.1"

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement as the superuser; autocommit (CREATE DATABASE needs it)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.admin, dbname=dbname,
                             autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement)
            row = cur.fetchone() if cur.description else None
            return "" if row is None else str(row[0])

    def can_login(self, user: str, password: str, dbname: str) -> bool:
        """Whether ``user`` can log in over TCP with ``password`` (SCRAM)."""
        import psycopg

        try:
            with psycopg.connect(host=self.host, port=self.port, user=user, password=password,
                                 dbname=dbname, connect_timeout=5) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:
            return False


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    if not PgServer.available():
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql-15)")
    if shutil.which("psql") is None:
        pytest.skip("psql is not on PATH (apt-get install postgresql-client-15)")
    with PgServer(scram=True) as server:
        yield Postgres(port=server.port, admin=server.superuser, log=server.log)
