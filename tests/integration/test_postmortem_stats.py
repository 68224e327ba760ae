"""``postmortem`` and ``stats`` over the records of real local-connection runs, through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from technician_ops.errors import ExitCode

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = "release-with-healthcheck"


# The CI systems technician-ops names as a run's origin: the runs here are "script" runs, also under CI.
_CI_VARS = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "CIRCLECI", "BUILD_NUMBER")


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _CI_VARS}
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(root), *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, env=env)


class Runs:
    def __init__(self, root: Path, ids: dict[str, str], run_metrics: Path) -> None:
        self.root, self.ids, self.run_metrics = root, ids, run_metrics

    def record(self, name: str) -> dict[str, Any]:
        from technician_ops.audit import open_store

        with open_store(None, self.root, reading=True) as store:
            return store.get(self.ids[name])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A health check that fails and rolls back, the release that passes it, and a dry run (as tests/conftest's demo)."""
    root = tmp_path_factory.mktemp("pm") / "proj"
    root.mkdir()
    for sub in ("runbooks", "playbooks"):
        shutil.copytree(REPO / sub, root / sub)
    hosts = root / "hosts"
    lines = ["all:", "  vars:", "    ansible_connection: local", "  children:", "    web:", "      hosts:"]
    for name in ("web1", "web2"):
        (hosts / name).mkdir(parents=True)
        lines.append(f"        {name}: {{state_dir: {hosts / name}}}")
    (root / "inventory").mkdir()
    (root / "inventory" / "hosts.yml").write_text("\n".join(lines) + "\n")
    run_metrics = root / "run-metrics.prom"
    ids = {}
    for name, args, code in (("rolled_back", ["-p", "release=r1"], ExitCode.ROLLED_BACK),
                             ("succeeded", ["-p", "release=r2", "-p", "healthy=true"], ExitCode.OK),
                             ("check", ["-p", "release=r3", "-p", "healthy=true", "--check"], ExitCode.OK)):
        proc = cli(root, "run", RUNBOOK, *args, "--output", "json", "--metrics-file", str(run_metrics))
        assert proc.returncode == code, proc.stderr[-2000:]
        ids[name] = json.loads(proc.stdout.splitlines()[0])["run_id"]
    return Runs(root, ids, run_metrics)


def times_in(value: Any, key: str = "") -> set[str]:
    if isinstance(value, dict):
        return set().union(set(), *(times_in(v, k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(set(), *(times_in(v, key) for v in value))
    if isinstance(value, str) and (key.endswith("_at") or key == "at"):
        return {dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return set()


def test_postmortem_of_the_rollback_and_the_fix(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "postmortem.md"
    proc = cli(runs.root, "postmortem", runs.ids["succeeded"][:12], runs.ids["rolled_back"], "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    failed, fixed = runs.record("rolled_back"), runs.record("succeeded")

    assert text.startswith(f"# Post-mortem draft: {RUNBOOK}, ")
    assert text.index(f"| R1 | {failed['run_id']} |") < text.index(f"| R2 | {fixed['run_id']} |")
    assert set(re.findall(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", text)) <= times_in(failed) | times_in(fixed)
    timeline = text.split("## Timeline (UTC)")[1].split("## What was done")[0]
    assert "| R1 | detect | origin type script |" in timeline
    assert "| R1 | act | step health-check failed on web1: " in timeline
    assert "| R1 | rollback | rollback started, undo order: ship, save-previous |" in timeline
    assert "| R1 | rollback | rollback ended: outcome rolled\\_back, 0 failed undo(s) |" in timeline
    assert timeline.rstrip().splitlines()[-1].split(" | ")[2] == "resolve"
    error = failed["steps"]["health-check"]["hosts"]["web1"]["error"]
    assert "service unhealthy after release r1" in error and f"```\n{error}\n```" in text
    output = failed["steps"]["health-check"]["hosts"]["web1"].get("output")
    if output and output.get("stderr"):  # per-host output, when the record has it
        assert f"```\n{output['stderr'].rstrip()}\n```" in text
    assert "1. Why did step health-check end failed on web1, web2 in R1? — _TO FILL_" in text
    assert f"record seq {failed['seq']}, hash {failed['hash']}" in text


def test_postmortem_of_the_rollback_alone_claims_no_resolution(runs: Runs) -> None:
    proc = cli(runs.root, "postmortem", runs.ids["rolled_back"])
    assert proc.returncode == 0, proc.stderr
    assert "resolve" not in proc.stdout and "Latest run (R1): outcome rolled\\_back, exit code 3." in proc.stdout
    unknown = cli(runs.root, "postmortem", runs.ids["rolled_back"], "ffffffffffff")
    assert unknown.returncode == ExitCode.USAGE and "no run 'ffffffffffff'" in unknown.stderr


def test_stats_of_the_runs_with_gauges_promtool_accepts(runs: Runs, tmp_path: Path) -> None:
    gauges = tmp_path / "textfile" / "technician_ops_stats.prom"
    proc = cli(runs.root, "stats", "--output", "json", "--metrics-file", str(gauges))
    assert proc.returncode == 0, proc.stderr
    real, dry = json.loads(proc.stdout)["runbooks"]
    assert (real["runbook"], real["check"], dry["check"]) == (RUNBOOK, False, True)
    assert (real["runs"], real["outcomes"]["rolled_back"], real["outcomes"]["succeeded"]) == (2, 1, 1)
    assert (dry["runs"], dry["outcomes"]["succeeded"]) == (1, 1)
    failed, fixed = runs.record("rolled_back"), runs.record("succeeded")
    ended = {name: dt.datetime.fromisoformat(r["ended_at"]) for name, r in (("f", failed), ("s", fixed))}
    assert real["recovery_seconds"]["n"] == 1
    assert real["recovery_seconds"]["mean"] == pytest.approx((ended["s"] - ended["f"]).total_seconds(), abs=0.002)
    durations = sorted((dt.datetime.fromisoformat(r["ended_at"]) - dt.datetime.fromisoformat(r["started_at"])).total_seconds()
                       for r in (failed, fixed))
    assert real["duration_seconds"]["p50"] == pytest.approx(durations[0], abs=0.002)
    assert real["duration_seconds"]["p95"] == pytest.approx(durations[1], abs=0.002)

    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not on PATH: scripts/setup installs it (Debian package prometheus)"
    lint = subprocess.run([promtool, "check", "metrics"], input=gauges.read_bytes(), capture_output=True, timeout=60)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, b"")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(gauges.read_text()) for s in family.samples}
    labels = (("check", "false"), ("outcome", "succeeded"), ("runbook", RUNBOOK))
    assert samples[("technician_ops_stats_outcome_ratio", labels)] == 0.5
    assert samples[("technician_ops_stats_recoveries", (("check", "false"), ("runbook", RUNBOOK)))] == 1

    text = cli(runs.root, "stats", RUNBOOK)
    assert text.returncode == 0 and "succeeded 50.0%, rolled_back 50.0%" in text.stdout
    assert f"{RUNBOOK}  (--check runs)" in text.stdout
    before = runs.run_metrics.read_bytes()  # the file `run --metrics-file` keeps is not stats' to replace
    clobber = cli(runs.root, "stats", "--metrics-file", str(runs.run_metrics))
    assert clobber.returncode == ExitCode.USAGE and "holds other metrics" in clobber.stderr
    assert runs.run_metrics.read_bytes() == before
