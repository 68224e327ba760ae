"""Smoke test of bench/run.py: it runs end to end and writes the figures it promises.

The benchmark's numbers are not pass/fail (they depend on the machine); what
is asserted is that one ``--quick`` run on 1 host produces the Markdown and
JSON reports with every figure present and positive, so the bench cannot rot
unnoticed.  It runs real ``technician-ops run`` and ``ansible-playbook``
processes, hence the integration mark; ``--reps 1`` keeps it inside a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SMOKE_TIMEOUT_S = 60


def _bench_module():  # bench/ is not a package: load run.py by path
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accelerate_figures_are_judged_only_where_the_issue_sets_a_target() -> None:
    bench = _bench_module()
    results = {"run_vs_raw": {
        "10": {"ratio": 1.05, "accel_vs_raw": 0.5, "accel_vs_naive": 0.4},
        "50": {"ratio": 1.05, "accel_vs_raw": 0.33, "accel_vs_naive": 0.31},
    }}
    rows = {row["figure"]: row for row in bench.verdicts(results)}
    assert rows["run_vs_raw_50"]["met"] is False  # 1.05 > 1.04
    assert rows["run_vs_raw_10"]["met"] is True
    assert rows["accel_vs_raw_50"]["met"] is True and rows["accel_vs_raw_50"]["target"] == "<= 0.35 x raw"
    assert rows["accel_vs_naive_50"]["met"] is False  # 0.31 > 0.3
    assert rows["accel_vs_raw_10"]["met"] is None and rows["accel_vs_raw_10"]["target"] == "none"


def test_a_pair_is_judged_on_the_ratio_of_medians_and_shows_each_rounds_ratio() -> None:
    bench = _bench_module()
    pair = bench._pair({"run": [10.0, 12.0, 30.0], "raw": [9.0, 13.0, 10.0]}, "run", "raw")
    assert pair["run_s"] == 12.0 and pair["raw_s"] == 10.0
    assert pair["ratio"] == 1.2  # median 12 / median 10
    assert pair["round_ratios"] == [1.1111, 0.9231, 3.0]  # each round against its neighbour
    assert pair["round_ratio_median"] == 1.1111
    line = bench._rounds(pair)
    assert "1.1111, 0.9231, 3.0" in line and "their median 1.1111" in line


def test_interleaving_reverses_the_order_every_other_round() -> None:
    bench = _bench_module()
    calls: list[str] = []

    def side(name: str):
        return lambda: calls.append(name) or float(len(calls))

    samples = bench.interleave({"a": side("a"), "b": side("b"), "c": side("c")}, reps=3, warmup=1)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert samples == {"a": [6.0, 7.0, 12.0], "b": [5.0, 8.0, 11.0], "c": [4.0, 9.0, 10.0]}  # warm-up dropped


@pytest.mark.integration
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--reps", "1", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [json_file] = list(out.glob("*.json"))
    assert json_file.with_suffix(".md").is_file()
    data = json.loads(json_file.read_text())

    assert data["meta"]["quick"] is True and data["meta"]["cpus"] >= 1
    probes = data["meta"]["speed_probe_ms"]  # before each section that ran, and at the end
    assert set(probes) == {"run", "startup", "lint", "audit", "events", "show", "end"} and min(probes.values()) > 0
    assert "Machine speed (a fixed Python loop" in json_file.with_suffix(".md").read_text()
    one = data["run_vs_raw"]["1"]
    assert one["hosts"] == 1 and one["run_s"] > 0 and one["raw_s"] > 0 and one["ratio"] > 0
    assert len(one["round_ratios"]) == 1 and one["round_ratio_median"] == one["round_ratios"][0]
    # ansible-playbook's resident set is tens of MiB: a figure in KiB or bytes would be far off
    assert 10 < one["peak_mib"]["raw"] < 2000 and 10 < one["peak_mib"]["run"] < 2000
    startup = data["startup"]
    for key in ("python_ms", "help_ms", "list_ms", "lint_one_ms"):
        assert startup[key] > 0, key
    assert startup["help_heavy_imports"] == [], "--help must not import ansible, ansible_runner, hvac or python_terraform"
    assert data["lint_many"]["runbooks"] == 50 and data["lint_many"]["seconds"] > 0
    sqlite = data["audit"]["sqlite"]
    for key in ("append_p50_ms", "append_p99_ms", "history_p50_ms", "history_p99_ms", "verify_s", "verify_s_per_100k"):
        assert sqlite[key] > 0, key
    assert sqlite["append_p99_ms"] >= sqlite["append_p50_ms"]
    assert sqlite["verified"] == sqlite["runs"]  # every populated run was chained and verified
    events = data["events"]
    assert events["us_per_event"] > 0 and events["bus_events"] > 0
    assert set(events["us_per_event_by_sinks"]) == {"tracker", "json", "text", "text+json"}
    show = data["show"]  # a whole `show RUN_ID` of 200 hosts x 5 steps, each with output
    assert show["hosts"] == 200 and show["steps"] == 5 and 0 < show["median_s"] < 30 and show["record_bytes"] > 100_000

    figures = {row["figure"]: row for row in data["verdicts"]}
    assert {"run_vs_raw_1", "peak_mem_vs_raw_1", "help_ms", "lint_one_ms", "lint_1000_s", "append_p99_ms", "history_p99_ms",
            "verify_s_per_100k", "event_ms", "show_200x5_s"} <= set(figures)
    assert all(isinstance(row["met"], bool) and row["value"] > 0 for row in figures.values())
    md = json_file.with_suffix(".md").read_text()
    assert "| run_vs_raw_1 |" in md and "<= 1.15 x raw" in md


@pytest.mark.integration
@pytest.mark.testbed
def test_quick_ssh_and_scale_sections_write_their_figures(tmp_path: Path) -> None:
    """bench/ssh.py over a 2-host SSH test bed (its own prefix and subnet) and bench/scale.py at 20 hosts."""
    from tests.support.testbed import testbed_unavailable

    reason = testbed_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--reps", "1", "--only", "ssh,scale",
                           "--ssh-hosts", "2", "--ssh-variants", "free", "--scale-hosts", "20", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [json_file] = list(out.glob("*.json"))
    data = json.loads(json_file.read_text())
    two = data["ssh"]["2"]
    assert two["hosts"] == 2 and two["slow_ms"] == 0
    assert {"run", "raw", "naive", "raw_free"} <= set(two["medians_s"]) and min(two["medians_s"].values()) > 0
    assert two["ratio"] > 0 and two["run_vs_naive"] > 0
    # The first change is the host's own file time, after the command started and before it ended.
    for side, first in two["first_change_s"].items():
        assert 0 < first < two["medians_s"][side] + 1, side
    scale = data["scale"]
    assert scale["hosts"] == 20 and scale["at_tenth"]["hosts"] == 2
    assert 0 < scale["tool_cpu_s"] < scale["total_cpu_s"] and 0 < scale["tool_cpu_share"] < 1
    assert 0 < scale["record_mb"] < 2 and 0 < scale["show_s"] < 30 and scale["tool_peak_mib"] > 10
    figures = {row["figure"] for row in data["verdicts"]}
    assert {"ssh_run_vs_raw_2", "ssh_run_vs_naive_2", "scale_tool_cpu_share_20", "scale_record_mb_20",
            "scale_show_s_20"} <= figures
    md = json_file.with_suffix(".md").read_text()
    assert "2 SSH hosts:" in md and "20 local hosts x 5 steps" in md
    # The bench's bed is gone: no namespace of its prefix is left.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "bnch-" not in netns


def test_quick_nodes_section_writes_its_figures(tmp_path: Path) -> None:
    """bench/ssh.py's ssh-nodes section over 2 SSH hosts and 2 execution nodes (its own prefix and subnet)."""
    from tests.support.testbed import testbed_unavailable

    reason = testbed_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--reps", "1", "--only",
                           "ssh-nodes", "--nodes-hosts", "2", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [json_file] = list(out.glob("*.json"))
    nodes = json.loads(json_file.read_text())["nodes"]
    assert nodes["hosts"] == 2 and nodes["nodes"] == 2 and nodes["ratio"] > 0
    assert set(nodes["medians_s"]) == {"controller", "nodes"} and min(nodes["medians_s"].values()) > 0
    assert "2 SSH hosts over 2 execution nodes" in json_file.with_suffix(".md").read_text()
    assert "bnchn-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
