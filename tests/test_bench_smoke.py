"""Smoke test of bench/run.py: it runs end to end and writes the figures it promises.

The benchmark's numbers are not pass/fail (they depend on the machine); what
is asserted is that one ``--quick`` run on 1 host produces the Markdown and
JSON reports with every figure present and positive, so the bench cannot rot
unnoticed.  It runs real ``technician-ops run`` and ``ansible-playbook``
processes, hence the integration mark; ``--reps 1`` keeps it inside a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

SMOKE_TIMEOUT_S = 60


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
    one = data["run_vs_raw"]["1"]
    assert one["hosts"] == 1 and one["run_s"] > 0 and one["raw_s"] > 0 and one["ratio"] > 0
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

    figures = {row["figure"]: row for row in data["verdicts"]}
    assert {"run_vs_raw_1", "help_ms", "lint_one_ms", "lint_1000_s", "append_p99_ms", "history_p99_ms",
            "verify_s_per_100k", "event_ms"} <= set(figures)
    assert all(isinstance(row["met"], bool) and row["value"] > 0 for row in figures.values())
    md = json_file.with_suffix(".md").read_text()
    assert "| run_vs_raw_1 |" in md and "<= 1.15 x raw" in md
