"""A throwaway PostgreSQL 15 cluster for the backup tests.

initdb runs as the ``postgres`` user (it refuses root) into a fresh temp dir;
the server listens on 127.0.0.1 on a free port, its unix socket in that temp
dir, with trust authentication (the cluster lives for one test session only).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    if os.geteuid() == 0:
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run initdb as")
        runas = ["runuser", "-u", "postgres", "--"]
    else:
        pg = pwd.getpwuid(os.geteuid())
        runas = []
    base = Path(tempfile.mkdtemp(prefix="techops-pg-"))
    os.chown(base, pg.pw_uid, pg.pw_gid)
    os.chmod(base, 0o755)  # the socket inside must be reachable by the test process
    data = base / "data"
    port = _free_port()
    cluster = PgCluster(socket_dir=base, port=port, user=pg.pw_name)
    try:
        subprocess.run(
            [*runas, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", pg.pw_name, "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *runas,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "30",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(base, ignore_errors=True)
