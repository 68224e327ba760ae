"""``stats``: percentiles, rates, recovery time, --check apart, and the gauges file."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from technician_ops.audit.store import RunRow
from technician_ops.errors import ExitCode, UsageError
from technician_ops.outputs.stats import (ALL, RAN, StatsMetricsError, StatsReport, compute, metrics_text, percentile,
                                          text, write_metrics_file)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
NOW = 1_800_000_000.0


def iso(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_n = iter(range(10_000))


def row(outcome: str, start: float, end: float | None, *, runbook: str = "rb", check: bool = False,
        reaped: bool = False) -> RunRow:
    return RunRow(f"run-{next(_n):05d}", runbook, outcome, iso(start), None if end is None else iso(end), check, reaped)


def samples(data: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(data.decode()):
        assert family.type == "gauge"
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def promtool_check(data: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: scripts/setup installs it (Debian package prometheus)")
    proc = subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, b"")


@pytest.mark.parametrize("values,p50,p95", [
    ([], None, None),
    ([7.0], 7.0, 7.0),
    ([2.0, 1.0], 1.0, 2.0),
    ([float(v) for v in range(100, 0, -1)], 50.0, 95.0),  # unsorted input; nearest rank of 1..100
    ([1.0, 2.0, 3.0, 4.0, 100.0], 3.0, 100.0),
])
def test_percentiles_are_nearest_rank(values: list[float], p50: float | None, p95: float | None) -> None:
    assert (percentile(values, 50), percentile(values, 95)) == (p50, p95)


def test_counts_rates_durations_and_recovery_of_one_runbook() -> None:
    rows = [
        row("succeeded", 0, 10),            # 10 s
        row("failed", 100, 130),            # streak starts: failure known at 130
        row("refused", 140, 140),           # ran nothing: neither ends nor extends the streak
        row("rolled_back", 200, 260),       # same streak
        row("succeeded", 300, 430),         # recovered at 430: 430 - 130 = 300 s
        row("skipped", 500, 500),
        row("awaiting_approval", 550, 550),  # an alert's run held for a human: ran nothing either
        row("rollback_failed", 600, 640),   # second streak from 640
        row("succeeded", 700, 740),         # recovered: 100 s
        row("interrupted", 1000, 5000, reaped=True),  # end is the reaper's; failure counted from its start
        row("running", 6000, None),
    ]
    [fig] = compute(reversed(rows))  # any order in
    assert fig.outcomes == {"succeeded": 3, "rolled_back": 1, "failed": 1, "rollback_failed": 1, "interrupted": 1,
                            "skipped": 1, "refused": 1, "awaiting_approval": 1, "running": 1}
    assert (fig.runs, fig.ran) == (11, 7)
    assert fig.rates == {"succeeded": 3 / 7, "rolled_back": 1 / 7, "failed": 1 / 7, "rollback_failed": 1 / 7,
                         "interrupted": 1 / 7}
    assert sorted(fig.durations) == [10.0, 30.0, 40.0, 40.0, 60.0, 130.0]  # the reaped run is left out
    assert (fig.percentile(50), fig.percentile(95)) == (40.0, 130.0)
    assert fig.recoveries == [300.0, 100.0] and fig.recovery_mean == 200.0
    assert fig.unrecovered_since == T0 + dt.timedelta(seconds=1000)


def test_a_signalled_interrupted_run_counts_from_its_end_and_has_a_duration() -> None:
    [fig] = compute([row("interrupted", 0, 50), row("succeeded", 60, 80)])
    assert fig.durations == [50.0, 20.0] and fig.recoveries == [30.0] and fig.unrecovered_since is None


def test_check_runs_and_runbooks_are_kept_apart() -> None:
    figs = compute([row("failed", 0, 5, runbook="b"), row("succeeded", 10, 20, runbook="b", check=True),
                    row("succeeded", 30, 40, runbook="a"), row("succeeded", 50, 60, runbook="b")])
    assert [(f.runbook, f.check, f.runs) for f in figs] == [("a", False, 1), ("b", False, 2), ("b", True, 1)]
    real_b, check_b = figs[1], figs[2]
    assert real_b.recoveries == [55.0]  # the dry run in between recovered nothing
    assert check_b.recoveries == [] and check_b.outcomes["succeeded"] == 1


def test_empty_history() -> None:
    report = StatsReport(compute([]))
    assert text(report) == "no runs recorded"
    assert text(StatsReport([], runbook="rb", since=T0)) == "no runs of rb recorded since 2026-03-01T12:00:00Z"
    assert report.to_json() == {"runbook": None, "since": None, "runbooks": []}
    data = metrics_text(report, NOW)
    assert samples(data) == {("technician_ops_stats_generated_timestamp_seconds", ()): NOW}
    promtool_check(data)


def test_a_runbook_that_never_ran_a_step_has_no_rates_or_durations() -> None:
    [fig] = compute([row("refused", 0, 0), row("skipped", 5, 5)])
    assert (fig.ran, fig.rates, fig.durations, fig.recoveries) == (0, {}, [], [])
    out = fig.to_json()
    assert out["duration_seconds"] == {"n": 0, "p50": None, "p95": None}
    assert out["recovery_seconds"] == {"n": 0, "mean": None, "unrecovered_since": None}
    assert "refused 1" in text(StatsReport([fig])) and "duration" not in text(StatsReport([fig]))


def test_text_and_json_say_the_same_figures() -> None:
    report = StatsReport(compute([row("rolled_back", 0, 50), row("succeeded", 60, 70)]), since=T0)
    out = text(report)
    assert "runs started since 2026-03-01T12:00:00Z" in out
    assert "succeeded 50.0%, rolled_back 50.0%" in out
    assert "duration: p50 10.0 s, p95 50.0 s (n=2)" in out
    assert "mean 20.0 s (n=1)" in out
    doc = json.loads(json.dumps(report.to_json()))
    [fig] = doc["runbooks"]
    assert doc["since"] == "2026-03-01T12:00:00Z"
    assert fig["duration_seconds"] == {"n": 2, "p50": 10.0, "p95": 50.0}
    assert fig["recovery_seconds"] == {"n": 1, "mean": 20.0, "unrecovered_since": None}
    assert sum(fig["rates"].values()) == pytest.approx(1.0) and set(fig["outcomes"]) == set(ALL)


def test_gauges_hold_the_figures_and_pass_promtool() -> None:
    odd = 'we"ird\\name\nline two {x="y"}'
    rows = [row("failed", 0, 10, runbook=odd), row("succeeded", 20, 50, runbook=odd),
            row("rolled_back", 60, 70, runbook=odd), row("succeeded", 0, 4, runbook="rb", check=True)]
    report = StatsReport(compute(rows), since=T0)
    data = metrics_text(report, NOW)
    got = samples(data)
    real = (("check", "false"), ("runbook", odd))
    assert got[("technician_ops_stats_runs", (("check", "false"), ("outcome", "failed"), ("runbook", odd)))] == 1
    assert got[("technician_ops_stats_runs", (("check", "false"), ("outcome", "skipped"), ("runbook", odd)))] == 0
    assert got[("technician_ops_stats_outcome_ratio", (("check", "false"), ("outcome", "succeeded"),
                                                        ("runbook", odd)))] == pytest.approx(1 / 3)
    assert got[("technician_ops_stats_duration_p50_seconds", real)] == 10.0
    assert got[("technician_ops_stats_duration_p95_seconds", real)] == 30.0
    assert got[("technician_ops_stats_recoveries", real)] == 1
    assert got[("technician_ops_stats_recovery_mean_seconds", real)] == 40.0
    assert got[("technician_ops_stats_unrecovered_since_timestamp_seconds", real)] == (T0.timestamp() + 70)
    assert got[("technician_ops_stats_window_start_timestamp_seconds", ())] == T0.timestamp()
    dry = (("check", "true"), ("runbook", "rb"))
    assert got[("technician_ops_stats_recoveries", dry)] == 0
    assert ("technician_ops_stats_recovery_mean_seconds", dry) not in got  # no n, no mean: absent, not NaN
    assert len([k for k in got if k[0] == "technician_ops_stats_runs"]) == 2 * len(ALL)
    assert len([k for k in got if k[0] == "technician_ops_stats_outcome_ratio"]) == 2 * len(RAN)
    promtool_check(data)


def test_the_gauges_file_is_replaced_whole_and_only_if_it_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "technician_ops_stats.prom"
    write_metrics_file(path, StatsReport(compute([row("succeeded", 0, 1, runbook="gone")])), NOW)
    write_metrics_file(path, StatsReport(compute([row("succeeded", 0, 1, runbook="kept")])), NOW + 1)
    runbooks = {dict(k[1]).get("runbook") for k in samples(path.read_bytes())} - {None}
    assert runbooks == {"kept"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["technician_ops_stats.prom"]  # no temp file left

    run_metrics = tmp_path / "technician_ops.prom"  # what `run --metrics-file` keeps: never clobbered
    run_metrics.write_text('# TYPE technician_ops_last_run_outcome gauge\n'
                           'technician_ops_last_run_outcome{runbook="rb",check="false",outcome="failed"} 1\n')
    not_metrics = tmp_path / "notes.txt"
    not_metrics.write_text("{ this is not a metrics file\n")
    link = tmp_path / "link.prom"
    link.symlink_to(path)
    for target, reason in ((run_metrics, "holds other metrics (technician_ops_last_run_outcome)"),
                           (not_metrics, "is not a Prometheus text file"), (link, "is a symbolic link")):
        before = target.read_bytes()
        with pytest.raises(StatsMetricsError, match=re.escape(reason)) as err:
            write_metrics_file(target, StatsReport([]), NOW)
        assert isinstance(err.value, UsageError) and err.value.exit_code == ExitCode.USAGE
        assert target.read_bytes() == before


# -- through the API and the CLI, on a real SQLite store ----------------------------------------


@pytest.fixture
def project_with_runs(tmp_path: Path) -> Path:
    from technician_ops.audit import open_store
    from tests.audit.helpers import finished_run

    root = tmp_path / "proj"
    (root / "runbooks").mkdir(parents=True)
    with open_store(None, root) as store:
        finished_run(store, "rb", "rolled_back", started_at=iso(0))
        finished_run(store, "rb", "succeeded", started_at=iso(3600))
        finished_run(store, "other", "succeeded", started_at=iso(7200), check=True)
    return root


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_api_reads_the_store_with_since_and_name(project_with_runs: Path) -> None:
    from technician_ops.api import open_project, stats

    project = open_project(project_with_runs, environ={})
    report = stats(project)
    assert [(f.runbook, f.check, f.runs) for f in report.figures] == [("other", True, 1), ("rb", False, 2)]
    assert len(report.figures[1].recoveries) == 1
    naive = (T0 + dt.timedelta(seconds=60)).replace(tzinfo=None)  # naive means UTC
    later = stats(project, "rb", since=naive)
    assert [f.runs for f in later.figures] == [1] and later.since == T0 + dt.timedelta(seconds=60)


@pytest.mark.parametrize("since", ["yesterday", "2026-02-30", "9999-12-31T23:59:59-14:00", "9999999999d", "7"])
def test_a_bad_since_is_a_usage_error(project_with_runs: Path, since: str) -> None:
    proc = cli("--project", str(project_with_runs), "stats", "--since", since)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "is not a date" in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_json_since_age_and_metrics_file(project_with_runs: Path, tmp_path: Path) -> None:
    prom = tmp_path / "stats.prom"
    proc = cli("--project", str(project_with_runs), "stats", "rb", "--since", "2026-03-01", "--output", "json",
               "--metrics-file", str(prom))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert [f["runbook"] for f in doc["runbooks"]] == ["rb"] and doc["runbooks"][0]["outcomes"]["rolled_back"] == 1
    assert f"metrics written to {prom}" in proc.stderr
    promtool_check(prom.read_bytes())
    recent = cli("--project", str(project_with_runs), "stats", "--since", "12h")  # the runs are far older
    assert recent.returncode == 0 and recent.stdout.startswith("no runs recorded since "), recent.stdout
    run_metrics = tmp_path / "technician_ops.prom"
    run_metrics.write_text('technician_ops_last_run_exit_code{runbook="rb",check="false"} 3\n')
    clobber = cli("--project", str(project_with_runs), "stats", "--metrics-file", str(run_metrics))
    assert clobber.returncode == ExitCode.USAGE and "Traceback" not in clobber.stderr
    assert "holds other metrics (technician_ops_last_run_exit_code)" in clobber.stderr
    assert run_metrics.read_text() == 'technician_ops_last_run_exit_code{runbook="rb",check="false"} 3\n'


def test_docs_name_exactly_the_gauges_written() -> None:
    from technician_ops.outputs.stats import FAMILIES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "postmortem.md").read_text()
    assert set(re.findall(r"technician_ops_stats_[a-z0-9_]+", doc)) == set(FAMILIES)
