"""A team's audit store: several controllers, each its own checkout and state, one PostgreSQL store.

Four controller processes at once run the real CLI against the same store: real runs through Ansible and
runs refused before anything ran (a missing parameter still leaves a record).  Afterwards ``audit verify``
passes, nothing is lost, no run is left ``running``, and ``history`` says which controller ran each run.
The store-level race (4 writers x 50 sealed runs, on SQLite and PostgreSQL) is in
tests/audit/test_audit_processes.py; this is the same promise through the product, as a team uses it.

Each controller makes ``TOPS_TEST_TEAM_RUNS`` runs (default 6: the suite's share of two cores), of which
three are real; ``TOPS_TEST_TEAM_FULL=1`` makes every run a real one (4 x 50 real runs take many minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from technician_ops.errors import ExitCode
from tests.conftest import DemoProject, make_demo
from tests.integration.conftest import Postgres

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

CONTROLLERS = [f"ctl-{n}" for n in range(4)]
RUNS = int(os.environ.get("TOPS_TEST_TEAM_RUNS", "50" if os.environ.get("TOPS_TEST_TEAM_FULL") == "1" else "6"))
REAL = RUNS if os.environ.get("TOPS_TEST_TEAM_FULL") == "1" else min(3, RUNS)

RUNBOOK = """---
hosts: web1
params:
  ticket: {type: string, required: true, help: the change ticket}
---

# Team check

```yaml {name=mark}
- ansible.builtin.copy: {dest: "{{ state_dir }}/mark-{{ ticket }}", content: "x\\n"}
```
"""


def cli(demo: DemoProject, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def controller_runs(demo: DemoProject, env: dict[str, str]) -> list[int]:
    """One controller's RUNS runs, one after the other: REAL real ones, then the rest refused."""
    codes = []
    for i in range(RUNS):
        params = ["-p", f"ticket=t{i}"] if i < REAL else []  # without the ticket: refused, nothing runs
        codes.append(cli(demo, env, "run", "team-check", *params).returncode)
    return codes


def test_four_controllers_share_one_store(tmp_path: Path, pg: Postgres) -> None:
    pg.sql("CREATE DATABASE team")
    url = f"postgresql://{pg.admin}@{pg.host}:{pg.port}/team"
    demos = []
    for name in CONTROLLERS:
        (tmp_path / name).mkdir()
        demo = make_demo(tmp_path / name)  # each controller: its own checkout, state dir and locks
        demo.write_runbook("team-check", RUNBOOK)
        demos.append(demo)
    envs = [{"TECHNICIAN_OPS_AUDIT_URL": url, "TECHNICIAN_OPS_CONTROLLER": name} for name in CONTROLLERS]
    assert cli(demos[0], envs[0], "history").returncode == 0  # the schema exists before the race

    with ThreadPoolExecutor(len(CONTROLLERS)) as pool:
        results = list(pool.map(controller_runs, demos, envs))

    for name, demo, codes in zip(CONTROLLERS, demos, results):
        assert codes == [ExitCode.OK] * REAL + [ExitCode.DATAERR] * (RUNS - REAL), name
        assert sorted(p.name for p in demo.host_dir("web1").glob("mark-*")) == sorted(f"mark-t{i}" for i in range(REAL))

    verify = cli(demos[1], envs[1], "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    total = len(CONTROLLERS) * RUNS
    assert f"{total} record(s) verified" in verify.stdout

    listed = cli(demos[2], envs[2], "history", "--limit", "1000", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == total
    assert sorted(r["seq"] for r in rows) == list(range(1, total + 1))  # one chain, no gap, nothing lost
    assert Counter(r["controller"] for r in rows) == {name: RUNS for name in CONTROLLERS}
    assert Counter((r["controller"], r["outcome"]) for r in rows) == {
        **{(name, "succeeded"): REAL for name in CONTROLLERS},
        **{(name, "refused"): RUNS - REAL for name in CONTROLLERS}}

    # One controller's runs, as its operator would ask for them; and a record says where it ran.
    mine = cli(demos[3], envs[3], "history", "--controller", "ctl-0", "--limit", "1000")
    assert mine.returncode == 0, mine.stderr
    lines = mine.stdout.splitlines()
    assert len(lines) == RUNS and all(line.endswith(" on ctl-0") for line in lines), lines[:3]
    succeeded = next(r for r in rows if r["controller"] == "ctl-3" and r["outcome"] == "succeeded")
    shown = cli(demos[0], envs[0], "show", succeeded["run_id"])
    assert shown.returncode == 0, shown.stderr
    assert "on controller ctl-3" in shown.stdout
