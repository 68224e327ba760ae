"""runbooks/db-failover.md against real PostgreSQL 15 streaming replication on the SSH test bed.

db1 starts as the primary, db2 as its streaming standby (testbed/pg.py), each
server inside its host's network namespace; web1 holds the app config the
runbook repoints.  Runs go through the real CLI in a subprocess (exit codes,
and a SIGKILL mid-run), and a sampler thread checks over the bridge, every
100 ms, that two nodes never accept writes at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from technician_ops.audit import open_store
from testbed.pg import BINDIR, PgCluster
from testbed.testbed import Testbed

pytestmark = [pytest.mark.integration, pytest.mark.testbed]

REPO = Path(__file__).resolve().parents[2]
APP_CONFIG = "/srv/app/database.conf"
PSQL = f"{BINDIR}/psql"


@pytest.fixture(scope="module")
def cluster(testbed: Testbed) -> Iterator[PgCluster]:
    if not Path(BINDIR, "initdb").exists():
        pytest.skip(f"PostgreSQL 15 server binaries not in {BINDIR}: apt-get install -y postgresql-15")
    pg = PgCluster(testbed)
    try:
        yield pg
    finally:
        pg.destroy()  # stop every server even when a test failed


class Failover:
    """One test's world: a fresh replicated cluster, a project, the web host's app config."""

    def __init__(self, bed: Testbed, pg: PgCluster, root: Path) -> None:
        self.bed, self.pg, self.root = bed, pg, root

    @property
    def app_config(self) -> Path:
        return self.bed.private_dir("web1", "/srv") / "app" / "database.conf"

    def markers(self, n: int, start: int = 1) -> None:
        self.pg.psql("db1", "create table if not exists markers (id int primary key, note text);"
                            f" insert into markers select g, 'before failover' from generate_series({start}, {start + n - 1}) g")

    def wait_replayed(self, node: str = "db2", timeout: float = 20.0) -> None:
        target = self.pg.psql("db1", "select pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while self.pg.psql(node, f"select pg_last_wal_replay_lsn() >= '{target}'") != "t":
            assert time.monotonic() < deadline, f"{node} did not replay {target}"
            time.sleep(0.1)

    def cli(self, *params: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*params, extra=extra), cwd=self.root, env=self.env(), capture_output=True,
                              text=True, timeout=240)

    def command(self, *params: str, extra: tuple[str, ...] = ()) -> list[str]:
        args = [sys.executable, "-m", "technician_ops.cli", "run", "db-failover", "--yes", "--output", "json",
                "-p", "primary=db1", "-p", "standby=db2", *extra]
        for p in params:
            args += ["-p", p]
        return args

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}

    def record(self, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        run_id = next(json.loads(line)["run_id"] for line in proc.stdout.splitlines() if line.startswith("{"))
        store = open_store(None, self.root)
        try:
            return store.get(run_id)
        finally:
            store.close()

    def in_recovery(self, node: str) -> bool:
        return self.pg.psql(node, "select pg_is_in_recovery()") == "t"

    def timeline(self, node: str) -> int:
        return int(self.pg.psql(node, "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"))


@pytest.fixture
def failover(tmp_path: Path, testbed_faults: Testbed, cluster: PgCluster) -> Iterator[Failover]:
    cluster.reset()
    root = tmp_path / "proj"
    (root / "runbooks").mkdir(parents=True)
    (root / "inventory").mkdir()
    shutil.copy(REPO / "runbooks" / "db-failover.md", root / "runbooks")
    shutil.copy(testbed_faults.inventory_path, root / "inventory" / "hosts.ini")
    world = Failover(testbed_faults, cluster, root)
    world.app_config.parent.mkdir(parents=True, exist_ok=True)
    world.app_config.write_text(f"host={cluster.address('db1')} port=5432 dbname=postgres\n")
    try:
        yield world
    finally:
        testbed_faults.heal()  # before cleanup: a cut-off host must answer to be cleaned
        shutil.rmtree(world.app_config.parent, ignore_errors=True)
        for node in cluster.nodes:
            cluster.stop(node, "immediate")


class PrimarySampler:
    """Every 100 ms, which nodes accept writes: there must never be two."""

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.samples: list[dict[str, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _writable(self, node: str) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.pg.conninfo(node).replace("connect_timeout=3", "connect_timeout=1"),
                                 autocommit=True) as conn:
                row = conn.execute("select not pg_is_in_recovery() and current_setting('transaction_read_only') = 'off'").fetchone()
                return bool(row and row[0])
        except psycopg.Error:
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append({n: self._writable(n) for n in self.pg.nodes})
            self._stop.wait(0.1)

    def __enter__(self) -> "PrimarySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def assert_never_split(self) -> None:
        assert len(self.samples) > 10, "the sampler hardly ran"
        split = [s for s in self.samples if sum(s.values()) > 1]
        assert not split, f"two writable primaries seen: {split[:3]}"


def artifacts(record: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(record["artifacts"].get(kind, []))


def psql_multi_host(pg: PgCluster) -> str:
    """Which server a libpq client over both nodes with target_session_attrs=read-write reaches."""
    proc = subprocess.run([PSQL, "-X", "-qAt", "-d", pg.multi_host_conninfo(), "-c", "select host(inet_server_addr())"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_primary_stopped_standby_caught_up_is_promoted(failover: Failover) -> None:
    pg = failover.pg
    failover.markers(200)
    failover.wait_replayed()
    pg.stop("db1")
    with PrimarySampler(pg) as sampler:
        proc = failover.cli()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    sampler.assert_never_split()
    assert not failover.in_recovery("db2")
    assert failover.timeline("db2") == 2  # one up from initdb's 1
    assert pg.psql("db2", "select count(*) from markers") == "200"  # every marker row survived
    pg.psql("db2", "insert into markers values (1000, 'after failover')")  # the new primary takes writes
    assert not pg.running("db1")  # fenced: still down
    assert failover.app_config.read_text().splitlines()[-1] == f"host={pg.address('db2')} port=5432 dbname=postgres"
    assert psql_multi_host(pg) == pg.address("db2")

    record = failover.record(proc)
    assert record["outcome"] == "succeeded"
    before = artifacts(record, "pg_state")[0]
    assert before["phase"] == "before" and before["nodes"]["db2"]["lag_bytes"] == 0
    assert before["nodes"]["db2"]["timeline"] == 1 and before["nodes"]["db2"]["replay_lsn"]
    assert before["nodes"]["db1"]["reachable"] is False
    after = [a for a in artifacts(record, "pg_state") if a["phase"] == "after"][0]
    assert (after["timeline_before"], after["timeline_after"]) == (1, 2)
    fence = artifacts(record, "pg_fence")[0]
    assert fence["host"] == "db1" and fence["verified"] is True and fence["override"] is False
    assert artifacts(record, "pg_failover")[0]["fenced"] == "db1"


def test_lagging_standby_is_refused_before_any_change(failover: Failover) -> None:
    pg = failover.pg
    failover.markers(10)
    failover.wait_replayed()
    pg.psql("db2", "select pg_wal_replay_pause()")
    pg.psql("db1", "create table filler as select g, repeat('x', 200) as pad from generate_series(1, 20000) g")
    pg.stop("db1")  # the primary is gone; db2 received the WAL but did not replay it
    proc = failover.cli("max_lag_bytes=1000000")
    assert proc.returncode == 1, proc.stdout[-3000:]  # 1: a check refused, nothing changed
    record = failover.record(proc)
    assert record["outcome"] == "failed" and record["failed_step"] == "preflight"
    error = record["steps"]["preflight"]["hosts"]["localhost"]["error"]
    assert "refused before any change" in error and "lags" in error and "replay is paused" in error
    state = artifacts(record, "pg_state")[0]
    assert state["nodes"]["db2"]["lag_bytes"] > 1_000_000 and state["nodes"]["db2"]["replay_paused"] is True
    assert "fence" not in record["steps"] or record["steps"]["fence"]["status"] != "succeeded"
    assert failover.in_recovery("db2")  # not promoted
    assert "promotion" not in failover.pg.sh("db2", "ls /srv/pg")  # no marker written
    assert failover.app_config.read_text() == f"host={pg.address('db1')} port=5432 dbname=postgres\n"


def test_writable_primary_is_refused_and_never_two_primaries(failover: Failover) -> None:
    pg = failover.pg
    failover.markers(10)
    failover.wait_replayed()
    with PrimarySampler(pg) as sampler:
        proc = failover.cli()
    assert proc.returncode == 1, proc.stdout[-3000:]
    sampler.assert_never_split()
    assert all(s["db1"] for s in sampler.samples)  # the primary was never touched
    record = failover.record(proc)
    assert "still accepts writes" in record["steps"]["preflight"]["hosts"]["localhost"]["error"]
    assert failover.in_recovery("db2") and pg.running("db1")


def test_cut_off_primary_is_not_promoted_without_a_verified_fence(failover: Failover) -> None:
    pg, bed = failover.pg, failover.bed
    failover.markers(10)
    failover.wait_replayed()
    bed.link_down("db1")  # PostgreSQL still runs there, unreachable
    with PrimarySampler(pg) as sampler:
        refused = failover.cli()
        assert refused.returncode == 75, refused.stdout[-2000:] + refused.stderr[-2000:]  # SSH preflight
        assert "db1" in refused.stderr
        forced = failover.cli(extra=("--skip-preflight",))
    sampler.assert_never_split()
    assert forced.returncode in (1, 3), forced.stdout[-3000:]
    record = failover.record(forced)
    assert record["failed_step"] == "fence"  # an unreachable host is never a fence
    assert record["steps"]["fence"]["hosts"]["db1"]["status"] == "unreachable"
    assert "promote" not in record["steps"] or record["steps"]["promote"]["status"] != "succeeded"
    assert not any(f["verified"] for f in artifacts(record, "pg_fence"))
    assert failover.in_recovery("db2")  # never promoted
    bed.link_up("db1")
    assert pg.running("db1") and not failover.in_recovery("db1")  # the old primary is untouched


def test_killed_between_promote_and_repoint_rerun_converges(failover: Failover) -> None:
    pg = failover.pg
    failover.markers(50)
    failover.wait_replayed()
    pg.stop("db1")
    proc = subprocess.Popen(failover.command(), cwd=failover.root, env=failover.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert proc.stdout is not None
    killed = False
    try:
        for line in proc.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "step_end" and event.get("step") == "promote":
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert killed, "the promote step never ended"
    assert not failover.in_recovery("db2") and failover.timeline("db2") == 2
    assert failover.app_config.read_text() == f"host={pg.address('db1')} port=5432 dbname=postgres\n"  # not repointed

    rerun = failover.cli()
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    record = failover.record(rerun)
    assert record["artifacts"]["pg_state"][0]["already_promoted"] is True
    assert record["steps"]["promote"]["hosts"]["db2"]["changed"] is False  # no second promotion
    assert failover.timeline("db2") == 2
    assert pg.psql("db2", "select count(*) from markers") == "50"
    assert f"host={pg.address('db2')} " in failover.app_config.read_text()
    assert psql_multi_host(pg) == pg.address("db2")


def test_planned_switchover_old_primary_rejoins_and_replicates(failover: Failover) -> None:
    pg = failover.pg
    failover.markers(100)
    with PrimarySampler(pg) as sampler:
        pg.psql("db1", "insert into markers values (500, 'just before the switchover')")  # maybe not replayed yet
        proc = failover.cli("planned=true")
    assert proc.returncode == 0, proc.stdout[-3000:]
    sampler.assert_never_split()
    assert not failover.in_recovery("db2") and failover.timeline("db2") == 2
    assert pg.psql("db2", "select count(*) from markers") == "101"  # the clean shutdown lost nothing
    assert failover.in_recovery("db1")  # the old primary is a standby now
    pg.psql("db2", "insert into markers values (2000, 'after the switchover')")
    deadline = time.monotonic() + 20
    while pg.psql("db1", "select count(*) from markers where id = 2000") != "1":
        assert time.monotonic() < deadline, "db1 does not replicate from db2"
        time.sleep(0.1)
    record = failover.record(proc)
    fence = artifacts(record, "pg_fence")[0]
    assert fence["verified"] and fence["shutdown_checkpoint_lsn"]
    assert record["steps"]["rejoin"]["hosts"]["db1"]["status"] == "changed"
    assert psql_multi_host(pg) == pg.address("db2")
