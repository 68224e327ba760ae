"""pg_dump into the store against a real PostgreSQL 15 (see conftest.pg_cluster)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from technician_ops.steps.backup.store import BackupError, BackupStore, BackupUnverifiable, pg_binary, pg_dump, verify_pg_dump


PgCluster = Any  # conftest.PgCluster; conftest modules are not importable by name

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROWS = 20000


@pytest.fixture(scope="module")
def appdb(pg_cluster: PgCluster) -> str:
    pg_cluster.psql("postgres", "CREATE DATABASE app")
    pg_cluster.psql(
        "app",
        f"""
        CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, total numeric(10,2));
        INSERT INTO orders (customer, total)
            SELECT md5(i::text), i * 1.5 FROM generate_series(1, {ROWS}) AS i;
        CREATE TABLE audit_log (at timestamptz DEFAULT now(), note text);
        INSERT INTO audit_log (note) VALUES ('one'), ('two'), ('three');
        """,
    )
    return "app"


def test_dump_verified_and_restorable(pg_cluster: PgCluster, appdb: str, tmp_path: Path) -> None:
    store = BackupStore(tmp_path / ".technician-ops" / "backups")
    out = store.path_for("run-1", "db1", "app.dump")
    sha = pg_dump(appdb, out, env=pg_cluster.env)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not out.with_name(out.name + ".part").exists()
    rec = store.record("run-1", "db1", "app.dump", runbook="db-failover", kind="postgres", sha256=sha,
                       details={"dbname": appdb})
    assert rec.sha256 == sha
    assert verify_pg_dump(out) > 0

    # Restorable: into a scratch database, with the same rows.
    pg_cluster.psql("postgres", "CREATE DATABASE scratch")
    subprocess.run(
        [pg_binary("pg_restore"), "--no-owner", "--exit-on-error", "-d", "scratch", str(out)],
        env={**pg_cluster.env, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    for table in ("orders", "audit_log"):
        sql = f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"
        assert pg_cluster.psql("scratch", sql) == pg_cluster.psql(appdb, sql)
    assert pg_cluster.psql("scratch", "SELECT count(*) FROM orders") == str(ROWS)


def test_truncated_dump_fails_verification(pg_cluster: PgCluster, appdb: str, tmp_path: Path) -> None:
    out = tmp_path / "app.dump"
    pg_dump(appdb, out, env=pg_cluster.env)
    data = out.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 20):
        broken = tmp_path / f"cut-{cut}.dump"
        broken.write_bytes(data[:cut])
        with pytest.raises(BackupUnverifiable):
            verify_pg_dump(broken)


def test_not_a_dump_fails_verification(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.dump"
    bogus.write_text("this is not a dump\n")
    with pytest.raises(BackupUnverifiable, match="not a readable pg_dump archive"):
        verify_pg_dump(bogus)


def test_dump_of_missing_database_fails_and_leaves_nothing(pg_cluster: PgCluster, tmp_path: Path) -> None:
    out = tmp_path / "nope.dump"
    with pytest.raises(BackupError, match="pg_dump of database no_such_db failed"):
        pg_dump("no_such_db", out, env=pg_cluster.env)
    assert not out.exists()
    assert not out.with_name(out.name + ".part").exists()
