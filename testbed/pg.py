"""Real PostgreSQL streaming replication on the SSH test bed: a primary and standbys.

Why over SSH and not from this process: each server must run *inside* its
host's network namespace, listening on that host's address, so that a
``link-down`` on the host really cuts the server off, exactly as it would cut
off a real database machine.  Every command therefore runs through
``Testbed.ssh`` as root on the host, and the server runs as the ``postgres``
OS user (``runuser``), because initdb and postgres refuse root.

The data directory (``/srv/pg/data``) and the Unix socket directory
(``/srv/pg/run``) live under the host's private ``/srv``, so db1 and db2 do
not share them although they share ``/usr/lib/postgresql``.  ``pg_hba.conf``
trusts the test bed's subnet for ordinary and replication connections: a
test bed is a throwaway lab, and the runbooks under test connect from the
controller (the bridge address) and between hosts.

``fsync=off`` keeps a reset to a few seconds; ``wal_log_hints=on`` is what
``pg_rewind`` needs to take a diverged old primary back as a standby.

Standard library only, like testbed.py.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from .testbed import Testbed, TestbedError

BINDIR = "/usr/lib/postgresql/15/bin"
PGROOT = "/srv/pg"
PGDATA = f"{PGROOT}/data"
PGSOCK = f"{PGROOT}/run"
PGLOG = f"{PGROOT}/server.log"
PORT = 5432


class PgCluster:
    """A primary on ``nodes[0]`` and streaming standbys on the other nodes.

    ``reset()`` builds it from nothing (a fresh initdb and pg_basebackup -R),
    ``destroy()`` stops every server and removes the data; both are safe to
    call in any state, which is what a fixture's teardown needs.
    """

    __test__ = False

    def __init__(self, bed: Testbed, nodes: Sequence[str] = ("db1", "db2"), *, bindir: str = BINDIR) -> None:
        if len(nodes) < 2:
            raise TestbedError("a replicated cluster needs at least two db hosts")
        self.bed = bed
        self.nodes = list(nodes)
        self.bindir = bindir

    # ---------------------------------------------------------------- facts

    def address(self, node: str) -> str:
        return self.bed.host(node).address

    def conninfo(self, node: str, dbname: str = "postgres") -> str:
        """libpq keywords to reach ``node`` from this machine (over the bridge)."""
        return f"host={self.address(node)} port={PORT} user=postgres dbname={dbname} connect_timeout=3"

    def multi_host_conninfo(self, dbname: str = "postgres") -> str:
        """One libpq string over every node that only a writable primary satisfies."""
        hosts = ",".join(self.address(n) for n in self.nodes)
        ports = ",".join(str(PORT) for _ in self.nodes)
        return (f"host={hosts} port={ports} user=postgres dbname={dbname} connect_timeout=3"
                " target_session_attrs=read-write")

    # ------------------------------------------------------------ commands

    def sh(self, node: str, script: str, *, check: bool = True, timeout: float = 60.0) -> str:
        """Run ``script`` as root on ``node``; its stdout."""
        proc = self.bed.ssh(node, script, timeout=timeout)
        if check and proc.returncode != 0:
            raise TestbedError(f"{node}: `{script[:200]}` failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-1500:]} {proc.stdout.strip()[-500:]}")
        return proc.stdout

    def pg(self, node: str, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        """Run a PostgreSQL binary as the postgres user on ``node``."""
        cmd = shlex.join(["runuser", "-u", "postgres", "--", f"{self.bindir}/{args[0]}", *args[1:]])
        return self.sh(node, f"cd /tmp && {cmd}", check=check, timeout=timeout)

    def psql(self, node: str, sql: str, dbname: str = "postgres", *, timeout: float = 10.0) -> str:
        """Run ``sql`` on ``node``'s server over the local socket, as postgres; unaligned output."""
        return self.pg(node, "psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", PGSOCK, "-p", str(PORT),
                       "-d", dbname, "-c", sql, timeout=timeout).strip()

    def start(self, node: str) -> None:
        self.pg(node, "pg_ctl", "-D", PGDATA, "-l", PGLOG, "-w", "-t", "30", "start")

    def stop(self, node: str, mode: str = "fast") -> None:
        """Stop the server if it runs (a no-op otherwise)."""
        self.sh(node, f"test -f {PGDATA}/postmaster.pid || exit 0; "
                      f"cd /tmp && runuser -u postgres -- {self.bindir}/pg_ctl -D {PGDATA} -m {mode} -w -t 30 stop",
                check=False)

    def running(self, node: str) -> bool:
        proc = self.bed.ssh(node, f"cd /tmp && runuser -u postgres -- {self.bindir}/pg_ctl -D {PGDATA} status")
        return proc.returncode == 0

    # ------------------------------------------------------------- building

    def _config(self, node: str) -> str:
        return "\n".join([
            "# written by testbed/pg.py",
            f"listen_addresses = '{self.address(node)}'",
            f"port = {PORT}",
            f"unix_socket_directories = '{PGSOCK}'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "hot_standby = on",
            "wal_log_hints = on",
            "fsync = off",
            "synchronous_commit = on",
            "wal_keep_size = 256MB",
            "max_connections = 40",
            "shared_buffers = 16MB",
            "wal_receiver_status_interval = 1s",
            "wal_retrieve_retry_interval = 500ms",
            "",
        ])

    def _hba(self) -> str:
        subnet = self.bed.state.subnet
        return "\n".join([
            "# written by testbed/pg.py: a lab cluster trusts its own subnet",
            "local all all trust",
            "local replication all trust",
            f"host all all {subnet} trust",
            f"host replication all {subnet} trust",
            "",
        ])

    def _write(self, node: str, path: str, text: str) -> None:
        self.sh(node, f"cat > {shlex.quote(path)} <<'TOPS_EOF'\n{text}TOPS_EOF\nchown postgres:postgres {shlex.quote(path)}")

    def _wipe(self, node: str) -> None:
        self.stop(node, "immediate")
        self.sh(node, f"rm -rf {PGROOT} && install -d -o postgres -g postgres -m 0700 {PGROOT} {PGSOCK} "
                      f"&& chmod 0755 {PGROOT} {PGSOCK}")

    def reset(self) -> None:
        """A fresh primary on nodes[0] and streaming standbys, caught up."""
        for node in self.nodes:
            self._wipe(node)
        primary = self.nodes[0]
        self.pg(primary, "initdb", "-D", PGDATA, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync")
        self._write(primary, f"{PGDATA}/conf.d.conf", self._config(primary))
        self.sh(primary, f"echo \"include 'conf.d.conf'\" >> {PGDATA}/postgresql.conf")
        self._write(primary, f"{PGDATA}/pg_hba.conf", self._hba())
        self.start(primary)
        for node in self.nodes[1:]:
            self.pg(node, "pg_basebackup", "-h", self.address(primary), "-p", str(PORT), "-U", "postgres",
                    "-D", PGDATA, "-R", "-X", "stream", "--no-sync", "-c", "fast", "-w")
            self._write(node, f"{PGDATA}/conf.d.conf", self._config(node))
            self.start(node)
        self.wait_streaming(primary, self.nodes[1:])

    def wait_streaming(self, primary: str, standbys: Sequence[str], timeout: float = 30.0) -> None:
        """Until every standby streams from ``primary`` (pg_stat_replication)."""
        want = {self.address(s) for s in standbys}
        deadline = time.monotonic() + timeout
        while True:
            out = self.psql(primary, "select client_addr from pg_stat_replication where state = 'streaming'")
            if want <= set(out.split()):
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"standbys {sorted(want)} not streaming from {primary} after {timeout:.0f}s")
            time.sleep(0.1)

    def destroy(self) -> None:
        """Stop every server and remove its data; never raises for what is gone."""
        for node in self.nodes:
            try:
                self.stop(node, "immediate")
                self.sh(node, f"rm -rf {PGROOT}", check=False)
            except (TestbedError, OSError, TimeoutError):
                continue

    def log(self, node: str) -> str:
        path = self.bed.private_dir(node, "/srv") / "pg" / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @staticmethod
    def private_log_path(bed: Testbed, node: str) -> Path:
        return bed.private_dir(node, "/srv") / "pg" / "server.log"
