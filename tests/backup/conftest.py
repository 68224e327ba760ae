"""A throwaway PostgreSQL 15 cluster for the backup tests (tests/support/pgserver.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pgserver import PgServer

PG_BIN = Path(os.environ.get("TECHOPS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class PgCluster:
    socket_dir: Path
    port: int
    user: str = "postgres"

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port), "PGUSER": self.user}

    def psql(self, dbname: str, sql: str) -> str:
        proc = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout.strip()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not PgServer.available():
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql-15)")
    with PgServer() as server:
        yield PgCluster(socket_dir=server.socket_dir, port=server.port, user=server.superuser)
