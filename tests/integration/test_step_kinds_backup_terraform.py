"""Integration tests of the ``backup`` and ``terraform`` step kinds.

Real everything: ansible-runner runs the compiled playbook against the
bundled local-connection inventory, terraform is the real binary on a module
that uses only the built-in ``terraform_data`` resource, PostgreSQL is a
throwaway PG 15 cluster on loopback started by a session fixture.

Each test works on a copy of the project (runbooks/, inventory/, terraform/)
in tmp_path, with the demo hosts' state dirs under tmp_path too, so tests
neither collide with each other nor touch /tmp/technician-ops-demo.
Preflight (an SSH reachability probe) is skipped: every host here is local.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from technician_ops.api import RunRequest, RunResult, run
from technician_ops.events import Event, Kind, Outcome
from technician_ops.project import Project, load_project
from tests.support.pgserver import PgServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("TECHOPS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
HOSTS = {"web": ["web1", "web2"], "db": ["db1"]}


class Collect:
    """A sink that keeps every event of a run."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def artifacts(self, type_: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind is Kind.ARTIFACT and e.data.get("type") == type_]


@dataclass
class Proj:
    root: Path

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    @property
    def project(self) -> Project:
        return load_project(self.root, environ={})

    def run(self, runbook: str, params: dict[str, str] | None = None, *, check: bool = False) -> tuple[RunResult, Collect]:
        sink = Collect()
        result = run(RunRequest(runbook, dict(params or {}), check=check, yes=True, skip_preflight=True),
                     self.project, [sink])
        return result, sink


@pytest.fixture
def proj(tmp_path: Path) -> Proj:
    root = tmp_path / "proj"
    root.mkdir()
    for sub in ("runbooks", "terraform"):
        shutil.copytree(REPO / sub, root / sub, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"))
    lines = ["all:", "  vars:", "    ansible_connection: local", "  children:"]
    for group, names in HOSTS.items():
        lines += [f"    {group}:", "      hosts:"]
        for name in names:
            (root / "hosts" / name).mkdir(parents=True)
            lines.append(f"        {name}: {{state_dir: {root / 'hosts' / name}}}")
    (root / "inventory").mkdir()
    (root / "inventory" / "hosts.yml").write_text("\n".join(lines) + "\n")
    return Proj(root)


def snapshot(directory: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every entry below ``directory``: type, content, permission bits."""
    out: dict[str, tuple[str, bytes | None, int]] = {".": ("dir", None, stat.S_IMODE(directory.lstat().st_mode))}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        out[str(path.relative_to(directory))] = (kind, path.read_bytes() if kind == "file" else None, stat.S_IMODE(st.st_mode))
    return out


def seed_config(proj: Proj) -> dict[str, dict[str, tuple[str, bytes | None, int]]]:
    before = {}
    for host in HOSTS["web"]:
        conf = proj.host_dir(host) / "conf"
        (conf / "sites").mkdir(parents=True)
        conf.chmod(0o755)
        (conf / "app.conf").write_bytes(f"# {host}\nworkers = 2\n".encode())
        (conf / "app.conf").chmod(0o640)
        (conf / "sites" / "default").write_bytes(b"listen 80;\n\x00binary\xff")
        (conf / "sites" / "default").chmod(0o600)
        before[host] = snapshot(conf)
    return before


# -- backup of files ------------------------------------------------------------


def test_patch_web_failure_restores_files_exactly(proj: Proj) -> None:
    before = seed_config(proj)

    result, sink = proj.run("patch-web")

    assert result.outcome is Outcome.ROLLED_BACK, result
    assert result.failed_step == "health-check"
    assert result.rollback["steps"] == ["patch", "backup-config"]
    for host in HOSTS["web"]:
        conf = proj.host_dir(host) / "conf"
        assert not (conf / "tuning.conf").exists(), "a file the patch added survived the rollback"
        assert snapshot(conf) == before[host]
    # The audit record got one verified backup per host, stored privately.
    backups = {a["host"]: a for a in sink.artifacts("backup")}
    assert set(backups) == set(HOSTS["web"])
    for host, art in backups.items():
        path = Path(art["path"])
        assert path == proj.root / ".technician-ops" / "backups" / result.run_id / host / "backup-config.tar"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"]
        assert art["size"] == path.stat().st_size
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert "content" not in art
    assert {a["host"] for a in sink.artifacts("backup_restored")} == set(HOSTS["web"])


def test_corrupted_backup_is_refused_and_rollback_fails(proj: Proj) -> None:
    seed_config(proj)
    text = (proj.root / "runbooks" / "patch-web.md").read_text()
    corrupt = '''```yaml {name=corrupt-backup kind=check}
# Test only: flip one byte of the stored archive before the rollback reads it.
- ansible.builtin.command:
    argv:
      - "{{ ansible_playbook_python }}"
      - "-c"
      - "import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[600] ^= 0xFF; open(p, 'wb').write(b)"
      - "{{ lookup('env', 'TECHNICIAN_OPS_STATE_DIR') }}/backups/{{ lookup('env', 'TECHNICIAN_OPS_RUN_ID') }}/{{ inventory_hostname }}/backup-config.tar"
  delegate_to: localhost
```

'''
    text = text.replace("name: patch-web", "name: patch-web-corrupt").replace("```sh {name=health-check", corrupt + "```sh {name=health-check")
    (proj.root / "runbooks" / "patch-web-corrupt.md").write_text(text)

    result, sink = proj.run("patch-web-corrupt")

    assert result.outcome is Outcome.ROLLBACK_FAILED, result
    failures = {f["host"]: f["error"] for f in result.rollback["failures"] if f["step"] == "backup-config"}
    assert set(failures) == set(HOSTS["web"])
    for host, error in failures.items():
        assert "refused" in error and "corrupted" in error and "sha256" in error, error
        # Nothing was half-restored: the patched files are still there for a human to see.
        conf = proj.host_dir(host) / "conf"
        assert (conf / "tuning.conf").exists()
        assert "workers = 8" in (conf / "app.conf").read_text()
    assert not sink.artifacts("backup_restored")


# -- terraform --------------------------------------------------------------------


def tf_outputs(module: Path) -> dict[str, Any]:
    proc = subprocess.run(["terraform", "output", "-json"], cwd=module, capture_output=True, text=True, check=True,
                          env={**os.environ, "TF_IN_AUTOMATION": "1"})
    return {k: v["value"] for k, v in json.loads(proc.stdout or "{}").items()}


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform binary not on PATH")
def test_terraform_rollback_previous_and_check_mode(proj: Proj) -> None:
    module = proj.root / "terraform" / "app"
    state = module / "terraform.tfstate"

    # First apply ever, later step fails: the undo destroys what the run created.
    result, _ = proj.run("terraform-demo", {"version": "1"})
    assert result.outcome is Outcome.ROLLED_BACK, result
    assert tf_outputs(module) == {}

    result, sink = proj.run("terraform-demo", {"version": "1", "healthy": "true"})
    assert result.outcome is Outcome.SUCCEEDED, result
    assert tf_outputs(module)["version"] == "1"
    assert [a["outputs"]["version"] for a in sink.artifacts("terraform_apply")] == ["1"]

    # version 2 is applied, the health check fails, rollback: previous puts 1 back.
    result, sink = proj.run("terraform-demo", {"version": "2"})
    assert result.outcome is Outcome.ROLLED_BACK, result
    assert tf_outputs(module)["version"] == "1"
    plans = sink.artifacts("terraform_plan")
    assert plans[0]["changes"] == ["terraform_data.app"]
    assert str(plans[0]["previous_apply"]["app_version"]) == "1"
    assert [a["outputs"]["version"] for a in sink.artifacts("terraform_apply")] == ["2", "1"]
    history = json.loads((proj.root / ".technician-ops" / "terraform-applies.json").read_text())
    assert [str(e["variables"]["app_version"]) for e in history["modules"]["terraform/app@default"]] == ["1"]
    assert not list((proj.root / ".technician-ops" / "runs").glob("*/terraform/*.tfplan")), "a plan file was left behind"

    # --check plans version 3, records the plan, changes nothing.
    state_before = state.read_bytes()
    result, sink = proj.run("terraform-demo", {"version": "3", "healthy": "true"}, check=True)
    assert result.outcome is Outcome.SUCCEEDED, result
    assert state.read_bytes() == state_before
    assert sink.artifacts("terraform_plan")[0]["changes"] == ["terraform_data.app"]
    assert sink.artifacts("terraform_plan")[0]["check"] is True
    assert not sink.artifacts("terraform_apply")
    assert tf_outputs(module)["version"] == "1"


# -- PostgreSQL ----------------------------------------------------------------


@dataclass(frozen=True)
class Pg:
    socket_dir: Path
    port: int
    user: str

    def psql(self, dbname: str, sql: str) -> str:
        proc = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, check=True)
        return proc.stdout.strip()


@pytest.fixture(scope="module")
def pg() -> Iterator[Pg]:
    """A throwaway PG 15 cluster (trust auth, loopback + a private socket dir)."""
    if not PgServer.available():
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql-15)")
    with PgServer() as server:
        yield Pg(server.socket_dir, server.port, server.superuser)


PG_RUNBOOK = """---
name: pg-patch
summary: Test runbook - dump a database, damage it, fail, restore it.
hosts: db
params:
  pg_host: {type: string, required: true}
  pg_port: {type: string, required: true}
  pg_user: {type: string, required: true}
  psql: {type: string, required: true}
---

```yaml {name=dump kind=backup}
postgres: {database: app, host: "{{ pg_host }}", port: "{{ pg_port }}", user: "{{ pg_user }}"}
```

```sh {name=delete-rows}
"$PSQL" -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d app -c "delete from items where id % 2 = 0; drop table notes"
```

```sh {rollback=delete-rows}
: the rows come back with the undo of the dump step
```

```sh {name=health-check kind=check}
echo "database check failed" >&2; exit 1
```
"""


def test_postgres_backup_is_verified_restorable_and_undone(proj: Proj, pg: Pg) -> None:
    pg.psql("postgres", "drop database if exists app")
    pg.psql("postgres", "drop database if exists scratch")
    pg.psql("postgres", "create database app")
    pg.psql("app", "create table items (id int primary key, label text); "
                   "insert into items select g, 'item ' || g from generate_series(1, 500) g; "
                   "create table notes (body text); insert into notes values ('keep me')")
    (proj.root / "runbooks" / "pg-patch.md").write_text(PG_RUNBOOK)

    result, sink = proj.run("pg-patch", {"pg_host": str(pg.socket_dir), "pg_port": str(pg.port), "pg_user": pg.user,
                                         "psql": str(PG_BIN / "psql")})

    assert result.outcome is Outcome.ROLLED_BACK, result
    # The undo put the rows and the dropped table back.
    assert pg.psql("app", "select count(*) from items") == "500"
    assert pg.psql("app", "select body from notes") == "keep me"
    # The recorded dump is verified and restores into a scratch database.
    (art,) = sink.artifacts("backup")
    assert art["source"] == "postgres" and art["host"] == "db1"
    dump = Path(art["path"])
    assert dump.name == "dump.dump" and hashlib.sha256(dump.read_bytes()).hexdigest() == art["sha256"]
    pg.psql("postgres", "create database scratch")
    subprocess.run([str(PG_BIN / "pg_restore"), "--no-password", "-h", str(pg.socket_dir), "-p", str(pg.port),
                    "-U", pg.user, "-d", "scratch", str(dump)], check=True, capture_output=True)
    assert pg.psql("scratch", "select count(*) from items") == "500"
    assert pg.psql("scratch", "select count(*) from notes") == "1"
