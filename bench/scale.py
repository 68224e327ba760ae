"""The 1,000-host scale check (issue 22): does the tool's own share stay flat per host?

One run of a five-step runbook (one cheap task per step: ``debug``, which
runs in Ansible's worker and starts no module interpreter, so Ansible's own
work is as small as it gets and the tool's share as large) over N
local-connection hosts, in one process:

- the tool's own CPU: the CLI process's user+system time (``RUSAGE_SELF``,
  written by a wrapper as the process exits: its event handling, record
  writing and terminal view), against the CPU of the whole process tree
  (``wait4``: the CLI, ansible-playbook and every worker it forked);
- the tool's peak memory (the CLI process's own ``ru_maxrss``);
- the record: the bytes the audit store holds for the run (header, chained
  record and every event);
- ``show RUN_ID`` as a whole process (median of 3).

The same run at N/10 hosts gives the per-host slope the figures are judged
against: a share that grows with hosts would show as a rising ms per host
and step.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchlib import PYTHON, BenchError, child_env

STEPS = 5

SCALE_RUNBOOK = "---\nname: scale\nsummary: Scale check, five one-task steps.\nhosts: fleet\n---\n\n# Scale\n" + "".join(
    f"\n```yaml {{name=step-{i}}}\n- ansible.builtin.debug:\n    msg: \"step {i} on {{{{ inventory_hostname }}}}\"\n"
    + ("  changed_when: true\n" if i % 2 else "") + "```\n"
    for i in range(1, STEPS + 1))

# Runs the CLI in this process and, as it exits (SystemExit included), writes its own rusage.
WRAPPER = """\
import atexit, json, resource, sys
def _write(path=sys.argv.pop(1)):
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(path, "w") as f:
        json.dump({"cpu_s": r.ru_utime + r.ru_stime, "maxrss_kib": r.ru_maxrss}, f)
atexit.register(_write)
from technician_ops.cli import main
sys.argv[0] = "technician-ops"
main()
"""


def _project(base: Path, n: int) -> Path:
    import yaml

    root = base / f"scale-{n}"
    (root / "runbooks").mkdir(parents=True)
    (root / "inventory").mkdir()
    (root / "runbooks" / "scale.md").write_text(SCALE_RUNBOOK)
    hosts = {f"n{i:04d}": None for i in range(n)}
    inv = {"all": {"vars": {"ansible_connection": "local"}, "children": {"fleet": {"hosts": hosts}}}}
    (root / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    return root


def _one(base: Path, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    root = _project(base, n)
    log(f"scale: one run over {n} local hosts x {STEPS} steps")
    usage_file = base / f"scale-{n}-usage.json"
    cmd = [PYTHON, "-c", WRAPPER, str(usage_file), "--project", str(root), "run", "scale", "--output", "json", "--yes"]
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            out.seek(0)
            raise BenchError(f"scale run over {n} hosts failed:\n" + "\n".join(out.read().splitlines()[-15:]))
        out.seek(0)
        run_id = next(json.loads(line)["run_id"] for line in out if '"run_id"' in line)
    own = json.loads(usage_file.read_text())
    total_cpu = usage.ru_utime + usage.ru_stime
    db = root / ".technician-ops" / "audit.db"
    with sqlite3.connect(db) as conn:
        head = conn.execute("SELECT length(header) + coalesce(length(record), 0) FROM runs WHERE run_id = ?",
                            (run_id,)).fetchone()[0]
        # A finished run's events are folded into its record (audit/fold.py): the rows left, if any, count too.
        ev_bytes = conn.execute("SELECT sum(length(data)) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
    shows = []
    for _ in range(3):
        t = time.perf_counter()
        sp = subprocess.run([PYTHON, "-m", "technician_ops.cli", "--project", str(root), "show", run_id],
                            cwd=root, env=child_env(), capture_output=True, text=True)
        shows.append(time.perf_counter() - t)
        if sp.returncode != 0 or f"n{n - 1:04d}" not in sp.stdout:
            raise BenchError(f"show of the {n}-host run failed: {sp.stderr[-500:]}")
    return {"hosts": n, "steps": STEPS, "run_id": run_id, "run_s": round(elapsed, 2),
            "tool_cpu_s": round(own["cpu_s"], 2), "total_cpu_s": round(total_cpu, 2),
            "tool_cpu_share": round(own["cpu_s"] / total_cpu, 4),
            "tool_cpu_ms_per_host_step": round(own["cpu_s"] * 1000 / (n * STEPS), 3),
            "tool_peak_mib": round(own["maxrss_kib"] / 1024, 1),
            "record_mb": round((head + (ev_bytes or 0)) / 1e6, 3), "show_s": round(statistics.median(shows), 3),
            "show_runs_s": [round(s, 3) for s in shows]}


def bench_scale(base: Path, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The check at ``n`` hosts, with the same run at n/10 for the per-host slope."""
    small = _one(base, max(1, n // 10), log)
    big = _one(base, n, log)
    big["at_tenth"] = {k: small[k] for k in ("hosts", "run_s", "tool_cpu_s", "tool_cpu_share",
                                              "tool_cpu_ms_per_host_step", "tool_peak_mib", "record_mb", "show_s")}
    return big
