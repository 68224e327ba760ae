#!/usr/bin/env python3
"""Benchmark of technician-ops against the targets of issue 9 (docs/performance.md).

Public tools only: Python's own clocks, the ``ansible-playbook`` next to this
interpreter, and SQLite (PostgreSQL when ``--pg-url`` is given).  Every
comparison is measured in ONE process run, interleaved A B, B A, A B ..., so that
drift of the machine (page cache, CPU frequency, a neighbour's load) hits
both sides alike; the ratios are computed from the medians of that run only.

    python bench/run.py                  # 1, 10, 50 hosts, 3 repetitions
    python bench/run.py --full           # adds 200 hosts
    python bench/run.py --quick          # smoke test: 1 host, 2 reps, small audit store
    python bench/run.py --pg-url postgresql://bench@127.0.0.1/scratch

Writes ``bench/results/<timestamp>.md`` (a table: figure, target, met?) and
the same numbers as ``<timestamp>.json`` beside it.  The checkout this file
lives in is the code measured (PYTHONPATH is set to it for every child).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from benchlib import (  # noqa: E402
    BENCH_RUNBOOK, NAIVE_PLAYBOOK, PYTHON, REPO, BenchError, BenchProject, _pair, ansible_playbook, child_env,
    compile_package, interleave, ms, pct, speed_probe, timed, tool,
)

HEAVY_MODULES = ("ansible", "ansible_runner", "hvac", "python_terraform")

# The targets of issue 9: (key in the results, comparison, limit, unit shown).
TARGETS = {
    "run_vs_raw_1": ("<=", 1.15, "x raw"),
    "run_vs_raw_10": ("<=", 1.06, "x raw"),
    "run_vs_raw_50": ("<=", 1.04, "x raw"),
    "run_vs_raw_200": ("<=", 1.04, "x raw"),
    **{f"peak_mem_vs_raw_{n}": ("<=", 1.2, "x raw") for n in (1, 10, 50, 200)},
    "default_vs_naive": ("<=", 0.8, "x naive"),
    "accel_vs_raw_50": ("<=", 0.35, "x raw"),
    "accel_vs_naive_50": ("<=", 0.3, "x naive"),
    "help_ms": ("<=", 100.0, "ms"),
    "lint_one_ms": ("<=", 150.0, "ms"),
    "lint_1000_s": ("<=", 2.0, "s"),
    "append_p99_ms": ("<=", 1.0, "ms"),
    "history_p99_ms": ("<=", 1.0, "ms"),
    "verify_s_per_100k": ("<=", 1.0, "s"),
    "event_ms": ("<=", 0.05, "ms"),
    "show_200x5_s": ("<=", 1.0, "s"),
    # issue 22: over the SSH test bed (bench/ssh.py) and at 1,000 hosts (bench/scale.py)
    "ssh_run_vs_raw_50": ("<=", 1.04, "x raw"),
    "ssh_run_vs_naive_50": ("<=", 0.5, "x naive"),
    "ssh_accel_vs_naive_50": ("<=", 0.2, "x naive"),
    "ssh20ms_run_vs_naive_10": ("<=", 0.4, "x naive"),
    "scale_tool_cpu_share_1000": ("<=", 0.05, "of the run's CPU"),
    "scale_record_mb_1000": ("<=", 2.0, "MB"),
    "scale_show_s_1000": ("<=", 1.0, "s"),
    # issue 23: 50 SSH hosts over two execution nodes vs the controller alone, on one machine
    "nodes_vs_controller_50": ("<=", 1.15, "x the controller alone"),
}

def bench_run_vs_raw(base: Path, hosts: list[int], reps: int, log: Callable[[str], None], warmup: int = 1,
                     accelerate_hosts: frozenset[int] = frozenset()) -> dict[str, Any]:
    """``run`` vs raw at each host count; at ``accelerate_hosts`` also ``run --accelerate`` and naive, interleaved."""
    from technician_ops.engine import accelerate

    usable = accelerate.check() if accelerate_hosts else None
    out: dict[str, Any] = {}
    for n in hosts:
        proj = BenchProject(base, n)
        sides: dict[str, Callable[[], float]] = {"run": proj.run_tool, "raw": proj.run_raw}
        if n in accelerate_hosts and usable is not None and usable.usable:
            sides.update(accelerate=proj.run_accelerated, naive=proj.run_naive)
        log(f"{' / '.join(sides)}, {n} host(s), {reps} reps")
        peaks: dict[str, list[float]] = {}
        samples = interleave(sides, reps, warmup, peaks)
        result = {"hosts": n, **_pair(samples, "run", "raw")}
        peak = {side: round(statistics.median(v), 1) for side, v in peaks.items()}
        result.update(peak_mib=peak, peak_ratio=round(peak["run"] / peak["raw"], 4))
        if "accelerate" in samples:
            accel, raw, naive = (statistics.median(samples[k]) for k in ("accelerate", "raw", "naive"))
            result.update(accelerate_s=round(accel, 4), naive_s=round(naive, 4),
                          accel_vs_raw=round(accel / raw, 4), accel_vs_naive=round(accel / naive, 4))
        elif n in accelerate_hosts and usable is not None:
            result["accelerate_skipped"] = usable.reason
        out[str(n)] = result
    return out


def bench_defaults_vs_naive(base: Path, n: int, reps: int, forks: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    (base / "naive").mkdir()
    proj = BenchProject(base / "naive", n)
    log(f"generated defaults vs naive ansible-playbook, {n} host(s), {reps} reps")
    sides: dict[str, Callable[[], float]] = {"run": proj.run_tool, "naive": proj.run_naive}
    for f in forks:  # the compiled playbook with another forks, to size a cheap config change
        sides[f"raw_forks_{f}"] = functools.partial(proj.run_raw_forks, f)
    sides["raw"] = proj.run_raw
    from technician_ops.engine import accelerate

    usable = accelerate.check()
    if usable.usable:  # not a target: how much the opt-in mode buys on the same hosts
        sides["accelerate"] = proj.run_accelerated
    samples = interleave(sides, reps)
    result = {"hosts": n, **_pair(samples, "run", "naive")}
    result["raw_s"] = round(statistics.median(samples["raw"]), 4)
    if "accelerate" in samples:
        result["accelerate_s"] = round(statistics.median(samples["accelerate"]), 4)
    else:
        result["accelerate_skipped"] = usable.reason
    for f in forks:
        result[f"raw_forks_{f}_s"] = round(statistics.median(samples[f"raw_forks_{f}"]), 4)
    return result


# --- CLI start-up and lint -----------------------------------------------------------


def heavy_imports_of_help() -> list[str]:
    """Top-level packages from HEAVY_MODULES that ``--help`` imports (python -X importtime)."""
    proc = subprocess.run([PYTHON, "-X", "importtime", "-m", "technician_ops.cli", "--help"], cwd=REPO,
                          env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"--help exited {proc.returncode}: {proc.stderr[-500:]}")
    imported = set()
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S.*)$", line)
        if m:
            imported.add(m.group(1).strip().split(".")[0])
    return sorted(imported & set(HEAVY_MODULES))


def bench_startup(base: Path, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    proj_root = base / "startup"
    (proj_root / "runbooks").mkdir(parents=True)
    (proj_root / "runbooks" / "bench.md").write_text(BENCH_RUNBOOK)
    runbook = str(proj_root / "runbooks" / "bench.md")
    env = child_env()
    log(f"CLI start-up, {reps} reps")
    samples = interleave({
        "python": lambda: timed([PYTHON, "-c", "pass"], cwd=proj_root, env=env),
        "help": lambda: timed(tool("--help"), cwd=proj_root, env=env),
        "list": lambda: timed(tool("--project", str(proj_root), "list"), cwd=proj_root, env=env),
        "lint_one": lambda: timed(tool("--project", str(proj_root), "lint", runbook), cwd=proj_root, env=env),
    }, reps)
    out: dict[str, Any] = {f"{k}_ms": ms(statistics.median(v)) for k, v in samples.items()}
    out["help_heavy_imports"] = heavy_imports_of_help()
    return out


def bench_lint_many(base: Path, count: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    proj_root = base / "lint-many"
    rb_dir = proj_root / "runbooks"
    rb_dir.mkdir(parents=True)
    for i in range(count):
        (rb_dir / f"bench-{i:04d}.md").write_text(BENCH_RUNBOOK.replace("name: bench\n", f"name: bench-{i:04d}\n", 1))
    log(f"lint of {count} runbooks in one process, {reps} reps")
    samples = interleave({"lint": lambda: timed(tool("--project", str(proj_root), "lint", str(rb_dir)),
                                                cwd=proj_root, env=child_env())}, reps, warmup=0)
    return {"runbooks": count, "seconds": round(statistics.median(samples["lint"]), 4),
            "samples": [round(v, 4) for v in samples["lint"]]}


# --- the audit store -------------------------------------------------------------------


def _header(run_id: str, i: int, started: dt.datetime) -> dict[str, Any]:
    return {"run_id": run_id, "runbook": f"runbook-{i % 20:02d}", "path": f"/srv/runbooks/runbook-{i % 20:02d}.md",
            "runbook_sha256": "0" * 64, "git": None, "operator": {"user": "bench", "host": "bench"},
            "origin": {"type": "terminal"}, "check": False,
            "started_at": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "params": {"version": "1"}}


def _run_events(i: int) -> list[Any]:
    from technician_ops.events import Event, Kind

    step = "write-config"
    return [
        Event(Kind.STEP_START, {"step": step, "kind": "ansible", "hosts": "web", "phase": "run"}),
        Event(Kind.HOST_RESULT, {"step": step, "host": f"web{i % 3}", "status": "changed", "changed": True,
                                 "duration": 0.4, "error": None, "phase": "run"}),
        Event(Kind.STEP_END, {"step": step, "status": "succeeded", "duration": 0.5, "phase": "run",
                              "hosts": {f"web{i % 3}": "changed"}}),
    ]


def _relax_durability(store: Any, on: bool) -> None:
    """Bulk population only: durability off while filling, back on for the measured part."""
    conn = getattr(store, "_conn", None)
    if conn is None:
        return
    if type(store).__name__ == "SqliteStore":
        conn.execute(f"PRAGMA synchronous={'OFF' if on else 'FULL'}")
    else:
        conn.execute(f"SET synchronous_commit TO {'off' if on else 'on'}")


def bench_audit(store_factory: Callable[[], Any], runs: int, appends: int, queries: int,
                log: Callable[[str], None]) -> dict[str, Any]:
    from technician_ops.audit import new_run_id
    from technician_ops.events import Event, Kind

    store = store_factory()
    try:
        # 1. durable append: one INSERT + commit (fsync) per event
        run_id = new_run_id()
        store.start_run(_header(run_id, 0, dt.datetime.now(dt.timezone.utc)))
        log(f"  {store.location}: {appends} durable appends")
        lat = []
        for k in range(appends):
            ev = Event(Kind.HOST_RESULT, {"step": "s", "host": f"h{k % 50:03d}", "status": "ok", "changed": False,
                                          "duration": 0.01, "error": None, "phase": "run"})
            t = time.perf_counter()
            store.append(run_id, ev)
            lat.append(time.perf_counter() - t)
        store.finish(run_id, "succeeded")
        # 2. populate ``runs`` finished runs through the store API, durability relaxed
        log(f"  {store.location}: populating {runs} runs")
        t0 = time.perf_counter()
        _relax_durability(store, True)
        start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
        for i in range(runs):
            rid = new_run_id()
            store.start_run(_header(rid, i, start + dt.timedelta(seconds=i)))
            for ev in _run_events(i):
                store.append(rid, ev)
            store.finish(rid, "succeeded")
        _relax_durability(store, False)
        populate_s = time.perf_counter() - t0
        # `history` and `audit verify` are commands of their own: they open the
        # store afresh, after the writers closed it (and SQLite checkpointed its WAL).
        store.close()
        store = store_factory()
        # 3. history --limit 50 (the API the command calls), newest first over the whole store
        # (half unfiltered, half for one runbook: both are index-ordered scans)
        per_runbook = {f"runbook-{r:02d}": len(range(r, runs, 20)) for r in range(20)}
        hist = []
        for q in range(queries):
            name = None if q % 2 == 0 else f"runbook-{q % 20:02d}"
            t = time.perf_counter()
            rows = store.history(name, limit=50)
            hist.append(time.perf_counter() - t)
            want = min(50, runs + 1 if name is None else per_runbook[name])
            if len(rows) != want:
                raise BenchError(f"history({name}) returned {len(rows)} rows, expected {want}")
        # 4. full chain verify
        log(f"  {store.location}: verify")
        t = time.perf_counter()
        result = store.verify()
        verify_s = time.perf_counter() - t
        if not result.ok:
            raise BenchError(f"verify failed on the bench store: {result}")
    finally:
        store.close()
    return {
        "location": store.location, "appends": appends,
        "append_p50_ms": ms(pct(lat, 50)), "append_p99_ms": ms(pct(lat, 99)),
        "runs": runs + 1, "populate_s": round(populate_s, 2),
        "history_queries": queries, "history_p50_ms": ms(pct(hist, 50)), "history_p99_ms": ms(pct(hist, 99)),
        "verify_s": round(verify_s, 4), "verified": result.checked,
        "verify_s_per_100k": round(verify_s * 100_000 / max(result.checked, 1), 4),
    }


def bench_audit_postgres(url: str, runs: int, appends: int, queries: int, log: Callable[[str], None]) -> dict[str, Any]:
    """In a schema of its own (dropped afterwards), so any scratch database will do."""
    import psycopg

    from technician_ops.audit.postgres import PostgresStore

    schema = f"tobench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    scoped = f"{url}{sep}options=-csearch_path%3D{schema}"
    try:
        return bench_audit(lambda: PostgresStore(scoped), runs, appends, queries, log)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


# --- the tool's own event pipeline -------------------------------------------------------


def synthetic_events(n: int, hosts: int = 10) -> list[dict[str, Any]]:
    """ansible-runner events of a runbook of several one-task steps on ``hosts`` hosts."""
    events: list[dict[str, Any]] = []
    step = 0
    while len(events) < n:
        name = f"step-{step}"
        events.append({"event": "playbook_on_play_start", "event_data": {"play": name, "name": name}})
        events.append({"event": "playbook_on_task_start", "event_data": {"task": f"task of {name}"}})
        for h in range(hosts):
            host = f"h{h:03d}"
            events.append({"event": "runner_on_start", "event_data": {"host": host, "task": f"task of {name}"}})
            events.append({"event": "runner_on_ok", "event_data": {
                "host": host, "task": f"task of {name}", "duration": 0.05,
                "res": {"changed": h % 2 == 0, "rc": 0, "stdout": "x" * 40}}})
        step += 1
    events.append({"event": "playbook_on_stats", "event_data": {}})
    return events


def bench_events(n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """µs per ansible-runner event through StepTracker -> Bus(redactor) -> TextView + JsonView.

    Also with fewer sinks, so a miss can be pinned on the tracker, the JSON
    printer or the rich terminal view.
    """
    from rich.console import Console

    from technician_ops.outputs.console import JsonView, TextView
    from technician_ops.events import Bus
    from technician_ops.engine.executor import StepTracker
    from technician_ops.engine.redact import Redactor

    events = synthetic_events(n)
    steps = {e["event_data"]["play"]: e["event_data"]["play"] for e in events if e["event"] == "playbook_on_play_start"}
    log(f"event pipeline, {len(events)} synthetic events")
    with open(os.devnull, "w") as null_text, open(os.devnull, "w") as null_json:
        def sinks(which: str) -> list[Any]:
            out: list[Any] = []
            if "text" in which:
                out.append(TextView(Console(file=null_text, highlight=False, force_terminal=False)))
            if "json" in which:
                out.append(JsonView("bench", null_json))
            return out

        per: dict[str, float] = {}
        emitted = 0
        for which in ("tracker", "json", "text", "text+json"):
            best = float("inf")
            for _ in range(3):  # best of three: the figure is the pipeline's, not the scheduler's
                redactor = Redactor(["not-a-real-secret-value"])
                bus = Bus(sinks(which), redactor=redactor)
                tracker = StepTracker(bus, steps, "run", redactor, {s: "ansible" for s in steps},
                                      {s: "all" for s in steps})
                counter = _Count()
                bus.add(counter)
                t = time.perf_counter()
                for ev in events:
                    tracker.handle(ev)
                tracker.finish(0)
                best = min(best, time.perf_counter() - t)
                emitted = counter.n
            per[which] = best / len(events)
    full = per["text+json"]
    return {"events": len(events), "bus_events": emitted, "us_per_event": round(full * 1e6, 2),
            "ms_per_event": round(full * 1000, 5),
            "us_per_event_by_sinks": {k: round(v * 1e6, 2) for k, v in per.items()}}


def bench_show(base: Path, hosts: int, steps: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``technician-ops show RUN_ID`` (a whole process) of a run whose every step printed on every host."""
    from technician_ops.audit import new_run_id
    from technician_ops.audit.sqlite import SqliteStore
    from technician_ops.events import Event, Kind

    project = base / "show"
    (project / "runbooks").mkdir(parents=True, exist_ok=True)
    state = project / ".technician-ops"
    store = SqliteStore(state / "audit.db")
    run_id = new_run_id()
    try:
        store.start_run(_header(run_id, 0, dt.datetime.now(dt.timezone.utc)))
        output = "\n".join(f"line {k}: " + "x" * 60 for k in range(20))
        for st in range(steps):
            name = f"step-{st}"
            store.append(run_id, Event(Kind.STEP_START, {"step": name, "kind": "shell", "hosts": "all", "phase": "run"}))
            for h in range(hosts):
                store.append(run_id, Event(Kind.HOST_RESULT, {
                    "step": name, "host": f"h{h:04d}", "status": "ok", "changed": False, "changed_unknown": False,
                    "duration": 0.5, "error": None, "phase": "run", "reason": None,
                    "output": {"stdout": output, "stderr": "", "msg": None, "rc": 0, "bytes": len(output),
                               "sha256": "0" * 64, "truncated": False}}))
            store.append(run_id, Event(Kind.STEP_END, {"step": name, "status": "succeeded", "duration": 1.0,
                                                       "phase": "run", "hosts": {}}))
        store.finish(run_id, "succeeded")
    finally:
        store.close()
    log(f"show of a run with {hosts} hosts x {steps} steps of output")
    cmd = [PYTHON, "-m", "technician_ops.cli", "--project", str(project), "show", run_id]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0 or f"h{hosts - 1:04d}" not in proc.stdout:
            raise BenchError(f"show failed: {proc.stderr[-500:]}")
    return {"hosts": hosts, "steps": steps, "seconds": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3),
            "record_bytes": (state / "audit.db").stat().st_size}


class _Count:
    """A sink that only counts: how many tool events the runner events became."""

    def __init__(self) -> None:
        self.n = 0

    def handle(self, event: Any) -> None:
        self.n += 1


# --- report ----------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are about, flattened to the TARGETS keys."""
    f: dict[str, float] = {}
    for n, r in results.get("run_vs_raw", {}).items():
        f[f"run_vs_raw_{n}"] = r["ratio"]
        if "peak_ratio" in r:
            f[f"peak_mem_vs_raw_{n}"] = r["peak_ratio"]
        if "accel_vs_raw" in r:
            f[f"accel_vs_raw_{n}"] = r["accel_vs_raw"]
            f[f"accel_vs_naive_{n}"] = r["accel_vs_naive"]
    if "defaults_vs_naive" in results:
        f["default_vs_naive"] = results["defaults_vs_naive"]["ratio"]
    s = results.get("startup", {})
    for key in ("help_ms", "lint_one_ms"):
        if key in s:
            f[key] = s[key]
    if "lint_many" in results:
        f["lint_1000_s"] = results["lint_many"]["seconds"] * 1000 / results["lint_many"]["runbooks"]
    sq = results.get("audit", {}).get("sqlite")
    if sq:
        f["append_p99_ms"] = sq["append_p99_ms"]
        f["history_p99_ms"] = sq["history_p99_ms"]
        f["verify_s_per_100k"] = sq["verify_s_per_100k"]
    if "events" in results:
        f["event_ms"] = results["events"]["ms_per_event"]
    if "show" in results:
        f["show_200x5_s"] = results["show"]["median_s"]
    for r in results.get("ssh", {}).values():
        tag = f"ssh{r['slow_ms']}ms" if r["slow_ms"] else "ssh"
        f[f"{tag}_run_vs_raw_{r['hosts']}"] = r["ratio"]
        f[f"{tag}_run_vs_naive_{r['hosts']}"] = r["run_vs_naive"]
        if "accel_vs_naive" in r:
            f[f"{tag}_accel_vs_naive_{r['hosts']}"] = r["accel_vs_naive"]
    nodes = results.get("nodes")
    if nodes:
        f[f"nodes_vs_controller_{nodes['hosts']}"] = nodes["ratio"]
    sc = results.get("scale")
    if sc:
        n = sc["hosts"]
        f[f"scale_tool_cpu_share_{n}"] = sc["tool_cpu_share"]
        f[f"scale_record_mb_{n}"] = sc["record_mb"]
        f[f"scale_show_s_{n}"] = sc["show_s"]
    return f


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, value in figures(results).items():
        if key not in TARGETS:  # e.g. --accelerate at a host count the issue sets no target for
            rows.append({"figure": key, "value": round(value, 4), "target": "none", "met": None})
            continue
        op, limit, unit = TARGETS[key]
        rows.append({"figure": key, "value": round(value, 4), "target": f"{op} {limit} {unit}".strip(),
                     "met": value <= limit})
    return rows


def _probe_line(meta: dict[str, Any]) -> list[str]:
    probes = meta.get("speed_probe_ms") or {}
    if not probes:
        return []
    low, high = min(probes.values()), max(probes.values())
    each = ", ".join(f"{k} {v}" for k, v in probes.items())
    return [f"Machine speed (a fixed Python loop, ms, before each section): {each}; slowest/fastest "
            f"{high / low:.2f}x.", ""]


def _rounds(r: dict[str, Any]) -> str:
    if "round_ratios" not in r:
        return ""
    return f" (round by round: {', '.join(map(str, r['round_ratios']))}; their median {r['round_ratio_median']})"


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [f"# technician-ops bench, {m['started_at']}", "",
             f"Machine: {m['machine']}, {m['cpus']} CPU(s), Python {m['python']}, ansible-core {m['ansible']}; "
             f"reps {m['reps']}, commit {m['commit']}; load average {m['loadavg_start']} at start, "
             f"{m.get('loadavg_end')} at the end; {m.get('seconds')} s in all.", "", *_probe_line(m),
             "| figure | measured | target | met |", "|---|---:|---|:---:|"]
    for row in results["verdicts"]:
        met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
        lines.append(f"| {row['figure']} | {row['value']} | {row['target']} | {met} |")
    lines += ["", "## Details", ""]
    for n, r in results.get("run_vs_raw", {}).items():
        lines.append(f"- run vs raw, {n} host(s): run {r['run_s']} s, raw {r['raw_s']} s, ratio {r['ratio']}"
                     + _rounds(r))
        if "peak_mib" in r:
            lines.append(f"- peak memory (largest process of the tree), {n} host(s): "
                         + ", ".join(f"{side} {mib} MiB" for side, mib in r["peak_mib"].items()))
        if "accelerate_s" in r:
            lines.append(f"- run --accelerate (mitogen), {n} host(s): {r['accelerate_s']} s, naive {r['naive_s']} s: "
                         f"{r['accel_vs_raw']}x raw, {r['accel_vs_naive']}x naive")
        elif "accelerate_skipped" in r:
            lines.append(f"- run --accelerate, {n} host(s): not measured ({r['accelerate_skipped']})")
    if "defaults_vs_naive" in results:
        d = results["defaults_vs_naive"]
        extra = ", ".join(f"{k.replace('_s', '')} {v} s" for k, v in d.items() if k.startswith("raw_forks_"))
        lines.append(f"- defaults vs naive, {d['hosts']} host(s): run {d['run_s']} s, naive {d['naive_s']} s, "
                     f"raw {d['raw_s']} s, ratio {d['ratio']}" + _rounds(d)
                     + (f"; compiled playbook with {extra}" if extra else ""))
        if "accelerate_s" in d:
            lines.append(f"- run --accelerate (mitogen), {d['hosts']} host(s): {d['accelerate_s']} s "
                         f"({d['accelerate_s'] / d['raw_s']:.3f}x raw, {d['accelerate_s'] / d['naive_s']:.3f}x naive)")
        elif "accelerate_skipped" in d:
            lines.append(f"- run --accelerate: not measured ({d['accelerate_skipped']})")
    s = results.get("startup")
    if s:
        lines.append(f"- start-up: python -c pass {s['python_ms']} ms, --help {s['help_ms']} ms, list {s['list_ms']} ms, "
                     f"lint one {s['lint_one_ms']} ms; heavy modules imported by --help: "
                     f"{', '.join(s['help_heavy_imports']) or 'none'}")
    if "lint_many" in results:
        lm = results["lint_many"]
        lines.append(f"- lint of {lm['runbooks']} runbooks in one process: {lm['seconds']} s")
    for backend, a in results.get("audit", {}).items():
        lines.append(f"- audit ({backend}): append p50 {a['append_p50_ms']} / p99 {a['append_p99_ms']} ms; "
                     f"history --limit 50 over {a['runs']} runs p50 {a['history_p50_ms']} / p99 {a['history_p99_ms']} ms; "
                     f"verify {a['verify_s']} s for {a['verified']} records ({a['verify_s_per_100k']} s/100k)")
    if "events" in results:
        e = results["events"]
        by = ", ".join(f"{k} {v}" for k, v in e["us_per_event_by_sinks"].items())
        lines.append(f"- event pipeline: {e['us_per_event']} µs per ansible-runner event over {e['events']} events "
                     f"({e['bus_events']} tool events emitted); µs/event by sinks: {by}")
    if "show" in results:
        sh = results["show"]
        lines.append(f"- show RUN_ID of {sh['hosts']} hosts x {sh['steps']} steps, each with 20 lines of output: "
                     f"{sh['median_s']} s median of {sh['seconds']} (store {sh['record_bytes']} bytes)")
    for r in results.get("ssh", {}).values():
        where = f"{r['hosts']} SSH hosts" + (f", +{r['slow_ms']} ms each way" if r["slow_ms"] else "")
        med = ", ".join(f"{k} {v} s" for k, v in r["medians_s"].items())
        lines.append(f"- {where}: {med}; run/raw {r['ratio']}" + _rounds(r)
                     + f"; run/naive {r['run_vs_naive']}" + _rounds(r["vs_naive"]))
        if "accel_vs_naive" in r:
            lines.append(f"  - run --accelerate: {r['accel_vs_naive']}x naive (rounds "
                         f"{', '.join(map(str, r['accel_rounds_vs_naive']))}), {r['accel_vs_raw']}x raw")
        elif "accelerate_skipped" in r:
            lines.append(f"  - run --accelerate: not measured ({r['accelerate_skipped']})")
        lines.append("  - first change on a host, s after start: "
                     + ", ".join(f"{k} {v}" for k, v in r["first_change_s"].items())
                     + "; peak memory MiB: " + ", ".join(f"{k} {v}" for k, v in r["peak_mib"].items()))
    nd = results.get("nodes")
    if nd:
        med = ", ".join(f"{k} {v} s" for k, v in nd["medians_s"].items())
        lines.append(f"- {nd['hosts']} SSH hosts over {nd['nodes']} execution nodes vs the controller alone "
                     f"({nd['cpus']} CPUs shared by controller, nodes and hosts): {med}; nodes/controller "
                     f"{nd['ratio']}" + _rounds(nd) + "; peak memory MiB: "
                     + ", ".join(f"{k} {v}" for k, v in nd["peak_mib"].items()))
    sc = results.get("scale")
    if sc:
        lines.append(f"- {sc['hosts']} local hosts x {sc['steps']} steps: run {sc['run_s']} s; the tool's own CPU "
                     f"{sc['tool_cpu_s']} s of {sc['total_cpu_s']} s ({sc['tool_cpu_share'] * 100:.1f} %), "
                     f"{sc['tool_cpu_ms_per_host_step']} ms per host and step; tool peak memory {sc['tool_peak_mib']} MiB; "
                     f"record {sc['record_mb']} MB; show {sc['show_s']} s; at {sc['at_tenth']['hosts']} hosts: "
                     f"{sc['at_tenth']['tool_cpu_ms_per_host_step']} ms per host and step, share "
                     f"{sc['at_tenth']['tool_cpu_share'] * 100:.1f} %, record {sc['at_tenth']['record_mb']} MB")
    return "\n".join(lines) + "\n"


def _ansible_version() -> str:
    try:
        from ansible.release import __version__

        return str(__version__)
    except ImportError:
        return "?"


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 host, 2 reps, no warm-up round, small audit store and lint set, no naive comparison")
    p.add_argument("--full", action="store_true", help="also 200 hosts")
    p.add_argument("--reps", type=int, help="measured repetitions per side (default 3; --quick 2)")
    p.add_argument("--hosts", help="comma-separated host counts for run vs raw (default 1,10,50)")
    p.add_argument("--accelerate-hosts",
                   help="host counts where run --accelerate and a naive run join the run-vs-raw interleaving "
                        "(default 50; --quick none; '' none)")
    p.add_argument("--naive-hosts", type=int, help="hosts of the defaults-vs-naive comparison (default 10; --quick 1)")
    p.add_argument("--forks", default="5", help="also time the compiled playbook with these forks (default 5; '' none)")
    p.add_argument("--audit-runs", type=int, help="runs in the audit store (default 100000; --quick 1000)")
    p.add_argument("--appends", type=int, help="durable appends measured (default 2000; --quick 200)")
    p.add_argument("--lint-count", type=int, help="runbooks in the bulk lint (default 1000; --quick 100)")
    p.add_argument("--events", type=int, help="synthetic events (default 50000; --quick 5000)")
    p.add_argument("--pg-url", help="also bench a PostgreSQL audit store (a scratch schema is created and dropped)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    p.add_argument("--only", help="comma-separated sections: run,naive,startup,lint,audit,events,show, and the "
                                  "SSH/scale ones, never run by default: ssh,ssh-slow,ssh-nodes,scale")
    p.add_argument("--ssh-hosts", default="10,50", help="SSH test bed sizes of the ssh section (default 10,50)")
    p.add_argument("--ssh-variants", default="",
                   help="ssh: also the compiled playbook with one setting changed: free,forks10,no_pipelining")
    p.add_argument("--slow-ms", type=int, default=20, help="ssh-slow: delay each way per host (default 20)")
    p.add_argument("--slow-hosts", type=int, default=10, help="ssh-slow: hosts (default 10)")
    p.add_argument("--scale-hosts", type=int, default=1000, help="scale: local hosts (default 1000)")
    p.add_argument("--nodes-hosts", type=int, default=50, help="ssh-nodes: SSH hosts split over 2 nodes (default 50)")
    args = p.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (2 if q else 3)
    hosts = args.hosts or ("1" if q else "1,10,50")
    args.host_list = [int(h) for h in hosts.split(",") if h.strip()]
    if args.full and 200 not in args.host_list:
        args.host_list.append(200)
    accel = args.accelerate_hosts if args.accelerate_hosts is not None else ("" if q else "50")
    args.accelerate_host_set = frozenset(int(h) for h in accel.split(",") if h.strip())
    args.naive_hosts = args.naive_hosts or (1 if q else 10)
    args.fork_list = [] if q else [int(f) for f in args.forks.split(",") if f.strip()]
    args.audit_runs = args.audit_runs if args.audit_runs is not None else (500 if q else 100_000)
    args.appends = args.appends or (100 if q else 2000)
    args.lint_count = args.lint_count or (50 if q else 1000)
    args.events = args.events or (2000 if q else 50_000)
    # --quick leaves out the defaults-vs-naive comparison (two more playbook runs): it must fit a test's minute.
    args.ssh_host_list = [int(h) for h in args.ssh_hosts.split(",") if h.strip()]
    args.sections = set((args.only or ("run,startup,lint,audit,events,show" if q else "run,naive,startup,lint,audit,events,show")).split(","))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    now = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {"meta": {
        "started_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "ansible": _ansible_version(),
        "commit": _commit(), "reps": args.reps, "loadavg_start": [round(x, 2) for x in os.getloadavg()], "quick": args.quick, "hyperfine": bool(shutil.which("hyperfine")),
    }}
    compile_package()
    probes: dict[str, float] = {}
    results["meta"]["speed_probe_ms"] = probes
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="technician-ops-bench-") as tmp:
        base = Path(tmp)
        if "run" in args.sections:
            probes["run"] = speed_probe()
            results["run_vs_raw"] = bench_run_vs_raw(base, args.host_list, args.reps, log, warmup=0 if args.quick else 1,
                                                     accelerate_hosts=args.accelerate_host_set)
        if "naive" in args.sections:
            probes["naive"] = speed_probe()
            results["defaults_vs_naive"] = bench_defaults_vs_naive(base, args.naive_hosts, args.reps, args.fork_list, log)
        if "startup" in args.sections:
            probes["startup"] = speed_probe()
            results["startup"] = bench_startup(base, 3 if args.quick else max(args.reps, 5), log)
        if "lint" in args.sections:
            probes["lint"] = speed_probe()
            results["lint_many"] = bench_lint_many(base, args.lint_count, args.reps, log)
        if "audit" in args.sections:
            probes["audit"] = speed_probe()
            from technician_ops.audit.sqlite import SqliteStore

            queries = 200 if args.quick else 1000
            log("audit store: SQLite (WAL, synchronous=FULL)")
            results["audit"] = {"sqlite": bench_audit(lambda: SqliteStore(base / "audit" / "audit.db"), args.audit_runs,
                                                      args.appends, queries, log)}
            if args.pg_url:
                log("audit store: PostgreSQL")
                results["audit"]["postgresql"] = bench_audit_postgres(args.pg_url, args.audit_runs, args.appends, queries, log)
        if "events" in args.sections:
            probes["events"] = speed_probe()
            results["events"] = bench_events(args.events, log)
        if "show" in args.sections:
            probes["show"] = speed_probe()
            results["show"] = bench_show(base, 200, 5, max(args.reps, 3), log)
        if "ssh" in args.sections or "ssh-slow" in args.sections:
            import ssh

            results["ssh"] = {}
            if "ssh" in args.sections:
                for n in args.ssh_host_list:
                    probes[f"ssh-{n}"] = speed_probe()
                    results["ssh"][str(n)] = ssh.bench_ssh(base, n, args.reps, log, warmup=0 if args.quick else 1,
                                                           accelerate=not args.quick,
                                                           variants=tuple(v for v in args.ssh_variants.split(",") if v))
            if "ssh-slow" in args.sections:
                probes["ssh-slow"] = speed_probe()
                results["ssh"][f"{args.slow_hosts}@{args.slow_ms}ms"] = ssh.bench_ssh(
                    base, args.slow_hosts, args.reps, log, slow_ms=args.slow_ms, warmup=0 if args.quick else 1)
        if "ssh-nodes" in args.sections:
            import ssh

            probes["ssh-nodes"] = speed_probe()
            results["nodes"] = ssh.bench_nodes(base, args.nodes_hosts, args.reps, log, warmup=0 if args.quick else 1)
        if "scale" in args.sections:
            import scale

            probes["scale"] = speed_probe()
            results["scale"] = scale.bench_scale(base, args.scale_hosts, log)
    probes["end"] = speed_probe()
    results["meta"]["seconds"] = round(time.perf_counter() - t_all, 1)
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["verdicts"] = verdicts(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    md_path, json_path = args.out / f"{stamp}.md", args.out / f"{stamp}.json"
    md_path.write_text(markdown(results))
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"written: {md_path}\n         {json_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
