"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, start on loopback, tear down.

Usage::

    with PgServer() as pg:
        url = pg.create_database("audit_test")

Runs the server as the ``postgres`` OS user when the tests run as root
(initdb refuses root); otherwise as the current user.  The cluster listens
only on 127.0.0.1 at a free port, with its Unix socket in the temp dir, and
``fsync=off`` because a test cluster is thrown away anyway.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
from typing import Any

DEFAULT_BINDIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def find_bindir() -> pathlib.Path | None:
    """The directory holding initdb/pg_ctl: $PG_BINDIR, Debian's path, or $PATH."""
    candidates = [os.environ.get("PG_BINDIR", ""), *DEFAULT_BINDIRS]
    for c in candidates:
        if c and (pathlib.Path(c) / "initdb").is_file():
            return pathlib.Path(c)
    found = shutil.which("initdb")
    return pathlib.Path(found).parent if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temp dir.  ``start()`` / ``stop()``, or use as a context manager."""

    superuser = "postgres"

    def __init__(self, bindir: pathlib.Path | None = None, *, os_user: str | None = None, scram: bool = False) -> None:
        """``scram``: TCP logins other than the superuser need their SCRAM password (tests of passwords)."""
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                                    "apt-get install -y postgresql-15, or set PG_BINDIR")
        self.bindir = found
        self.os_user = os_user if os_user is not None else ("postgres" if os.geteuid() == 0 else None)
        self.port = 0
        self.tmp: pathlib.Path | None = None
        self.started = False
        self.scram = scram

    @staticmethod
    def available() -> bool:
        return find_bindir() is not None

    @property
    def datadir(self) -> pathlib.Path:
        assert self.tmp is not None
        return self.tmp / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})

    def start(self) -> "PgServer":
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="tops-pg-"))
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        try:
            self._run("initdb", "-D", str(self.datadir), "-U", self.superuser, "--auth=trust",
                      "-E", "UTF8", "--locale=C", "--no-sync")
            if self.scram:
                # The superuser logs in without a password (as a DBA would by
                # peer); every other role needs its SCRAM password.
                (self.datadir / "pg_hba.conf").write_text(
                    "local all all trust\n"
                    f"host all {self.superuser} 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
            last: subprocess.CompletedProcess[str] | None = None
            for _ in range(3):  # the free port can be taken between probe and bind: retry
                self.port = free_port()
                opts = (f"-k {self.tmp} -p {self.port} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c full_page_writes=off -c max_connections=50")
                last = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.tmp / "server.log"),
                                 "-w", "-t", "60", "-o", opts, "start", check=False)
                if last.returncode == 0:
                    self.started = True
                    return self
            log = (self.tmp / "server.log").read_text(errors="replace")[-2000:] if (self.tmp / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {last.stderr if last else ''}\n{log}")
        except BaseException:
            self.stop()
            raise

    @property
    def socket_dir(self) -> pathlib.Path:
        assert self.tmp is not None
        return self.tmp

    @property
    def log(self) -> pathlib.Path:
        return self.socket_dir / "server.log"

    @property
    def env(self) -> dict[str, str]:
        """libpq environment reaching this cluster as the superuser over its socket."""
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port), "PGUSER": self.superuser}

    def psql(self, dbname: str, sql: str) -> str:
        proc = subprocess.run([str(self.bindir / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql],
                              env={**os.environ, **self.env}, capture_output=True, text=True, check=True, timeout=120)
        return proc.stdout.strip()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True, **kwargs)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
