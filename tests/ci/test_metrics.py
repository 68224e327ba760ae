"""The textfile-collector file, read back with prometheus_client's own parser and linted by promtool."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from technician_ops.engine.request import RunResult
from technician_ops.errors import ExitCode
from technician_ops.events import Outcome
from technician_ops.outputs.metrics import OUTCOMES, MetricsError, runbooks_in, write_metrics
from technician_ops.outputs.reports import Reports


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge"
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, runbook: str, check: str = "false", **labels: str) -> float | None:
    return samples.get((name, tuple(sorted({"runbook": runbook, "check": check, **labels}.items()))))


def promtool_check(path: Path) -> None:
    """What Prometheus' own linter says of the file: nothing, with exit 0."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: scripts/setup installs it (Debian package prometheus)")
    proc = subprocess.run([promtool, "check", "metrics"], input=path.read_bytes(), capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, b"")


def test_two_runbooks_share_a_file_and_failure_keeps_last_success(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "technician_ops.prom"
    write_metrics(path, "db-backup", Outcome.SUCCEEDED, 12.5, 1_700_000_000.25, 0)
    write_metrics(path, "rotate-certs", "succeeded", 3.0, 1_700_000_100, 0)
    write_metrics(path, "db-backup", Outcome.ROLLED_BACK, 40.0, 1_700_003_600, 3)
    samples = parse(path)

    assert value(samples, "technician_ops_last_run_outcome", "db-backup", outcome="rolled_back") == 1
    assert sum(value(samples, "technician_ops_last_run_outcome", "db-backup", outcome=o) for o in OUTCOMES) == 1
    assert value(samples, "technician_ops_last_run_outcome", "db-backup", outcome="succeeded") == 0
    assert value(samples, "technician_ops_last_run_duration_seconds", "db-backup") == 40.0
    assert value(samples, "technician_ops_last_run_timestamp_seconds", "db-backup") == 1_700_003_600
    assert value(samples, "technician_ops_last_success_timestamp_seconds", "db-backup") == 1_700_000_000.25
    assert value(samples, "technician_ops_last_run_exit_code", "db-backup") == 3
    # the other runbook is untouched
    assert value(samples, "technician_ops_last_run_outcome", "rotate-certs", outcome="succeeded") == 1
    assert value(samples, "technician_ops_last_success_timestamp_seconds", "rotate-certs") == 1_700_000_100
    assert list(runbooks_in(path)) == ["db-backup", "rotate-certs"]
    # one series per (runbook, outcome) and no duplicates of the scalar gauges
    assert len([k for k in samples if k[0] == "technician_ops_last_run_outcome"]) == 2 * len(OUTCOMES)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["technician_ops.prom", "technician_ops.prom.lock"]
    promtool_check(path)


def test_never_succeeded_has_no_success_series_then_success_sets_it(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, "rb", Outcome.FAILED, 1.0, 100.0, 1)
    assert value(parse(path), "technician_ops_last_success_timestamp_seconds", "rb") is None
    write_metrics(path, "rb", Outcome.SUCCEEDED, 1.0, 200.0, 0)
    assert value(parse(path), "technician_ops_last_success_timestamp_seconds", "rb") == 200.0


def test_label_values_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    odd = 'we"ird\\name\nline two'
    write_metrics(path, odd, Outcome.INTERRUPTED, 2.0, 5.0, 130)
    write_metrics(path, "plain", Outcome.SUCCEEDED, 2.0, 6.0, 0)
    samples = parse(path)
    assert value(samples, "technician_ops_last_run_exit_code", odd) == 130
    assert value(samples, "technician_ops_last_run_outcome", odd, outcome="interrupted") == 1
    promtool_check(path)


def test_concurrent_writers_lose_no_runbook(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    names = [f"rb{i}" for i in range(12)]
    threads = [threading.Thread(target=write_metrics, args=(path, n, Outcome.SUCCEEDED, 1.0, 10.0, 0)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(runbooks_in(path)) == sorted(names)


def test_corrupt_file_is_a_clear_error_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    path.write_text("this is { not prometheus\n")
    with pytest.raises(MetricsError, match="not in the Prometheus text format"):
        write_metrics(path, "rb", Outcome.SUCCEEDED, 1.0, 1.0, 0)
    assert path.read_text() == "this is { not prometheus\n"


def test_running_is_not_an_outcome_to_record(tmp_path: Path) -> None:
    with pytest.raises(MetricsError):
        write_metrics(tmp_path / "m.prom", "rb", Outcome.RUNNING, 1.0, 1.0, 0)


def test_rewrite_is_stable_and_groups_by_runbook(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, "b", Outcome.FAILED, 1.0, 1.0, 1)
    write_metrics(path, "a", Outcome.SUCCEEDED, 1.0, 2.0, 0)
    first = path.read_text()
    write_metrics(path, "b", Outcome.FAILED, 1.0, 1.0, 1)
    assert path.read_text() == first  # reading back and rewriting changes nothing
    [outcomes] = [f for f in text_string_to_metric_families(first) if f.name == "technician_ops_last_run_outcome"]
    assert [s.labels["runbook"] for s in outcomes.samples] == ["a"] * len(OUTCOMES) + ["b"] * len(OUTCOMES)


def test_a_check_run_keeps_the_real_runs_outcome(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, "db-backup", Outcome.ROLLED_BACK, 40.0, 1_700_000_000, 3)
    write_metrics(path, "db-backup", Outcome.SUCCEEDED, 2.0, 1_700_000_500, 0, check=True)
    samples = parse(path)
    real = {o: value(samples, "technician_ops_last_run_outcome", "db-backup", outcome=o) for o in OUTCOMES}
    dry = {o: value(samples, "technician_ops_last_run_outcome", "db-backup", "true", outcome=o) for o in OUTCOMES}
    assert [o for o, v in real.items() if v == 1] == ["rolled_back"] and sum(real.values()) == 1
    assert [o for o, v in dry.items() if v == 1] == ["succeeded"] and sum(dry.values()) == 1
    assert value(samples, "technician_ops_last_run_exit_code", "db-backup") == 3
    assert value(samples, "technician_ops_last_run_exit_code", "db-backup", "true") == 0
    # a dry run's success is not the runbook's: the real series still has none
    assert value(samples, "technician_ops_last_success_timestamp_seconds", "db-backup") is None
    assert value(samples, "technician_ops_last_success_timestamp_seconds", "db-backup", "true") == 1_700_000_500
    assert {dict(labels)["check"] for _, labels in samples} == {"true", "false"}
    promtool_check(path)


def test_a_real_run_replaces_only_the_real_series(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    write_metrics(path, "rb", Outcome.FAILED, 1.0, 100.0, 1, check=True)
    write_metrics(path, "rb", Outcome.SUCCEEDED, 1.0, 200.0, 0)
    write_metrics(path, "rb", Outcome.FAILED, 1.0, 300.0, 1)
    samples = parse(path)
    assert value(samples, "technician_ops_last_run_outcome", "rb", outcome="failed") == 1
    assert value(samples, "technician_ops_last_success_timestamp_seconds", "rb") == 200.0
    assert value(samples, "technician_ops_last_run_timestamp_seconds", "rb") == 300.0
    assert value(samples, "technician_ops_last_run_timestamp_seconds", "rb", "true") == 100.0
    assert len([k for k in samples if k[0] == "technician_ops_last_run_outcome"]) == 2 * len(OUTCOMES)


def test_series_from_before_the_check_label_are_taken_as_real_runs(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    path.write_text(
        "# HELP technician_ops_last_run_exit_code Exit code of the runbook's last run.\n"
        "# TYPE technician_ops_last_run_exit_code gauge\n"
        'technician_ops_last_run_exit_code{runbook="old"} 4\n'
        'technician_ops_last_run_exit_code{runbook="rb"} 1\n'
        "# HELP technician_ops_last_success_timestamp_seconds Unix time at which the runbook last succeeded.\n"
        "# TYPE technician_ops_last_success_timestamp_seconds gauge\n"
        'technician_ops_last_success_timestamp_seconds{runbook="rb"} 50\n')
    write_metrics(path, "rb", Outcome.FAILED, 1.0, 100.0, 1)
    samples = parse(path)
    assert all("check" in dict(labels) for _, labels in samples)  # no unlabelled duplicate left behind
    assert value(samples, "technician_ops_last_run_exit_code", "old") == 4
    assert value(samples, "technician_ops_last_success_timestamp_seconds", "rb") == 50
    promtool_check(path)


def test_reports_of_a_check_run_write_the_check_series(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    result = RunResult("r1", Outcome.SUCCEEDED, ExitCode.OK, None, {}, {}, None, 1.5)
    assert Reports("rb", None, metrics=str(path), check=True).finish(result, None) == []
    assert Reports("rb", None, metrics=str(path)).finish(result, None) == []
    samples = parse(path)
    assert value(samples, "technician_ops_last_run_outcome", "rb", "true", outcome="succeeded") == 1
    assert value(samples, "technician_ops_last_run_outcome", "rb", "false", outcome="succeeded") == 1


def test_promtool_finds_what_it_should(tmp_path: Path) -> None:
    """The lint must be able to fail, or the checks above prove nothing."""
    path = tmp_path / "bad.prom"
    path.write_text("# TYPE requests_total gauge\nrequests_total 1\n")
    with pytest.raises(AssertionError):
        promtool_check(path)
