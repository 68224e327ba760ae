"""What every section of the bench shares: the timed child, the A/B interleaving, the bench project.

bench/run.py is the entry point (see its docstring and docs/performance.md);
bench/ssh.py and bench/scale.py hold the sections of issue 22.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PYTHON = sys.executable

BENCH_RUNBOOK = """\
---
name: bench
summary: Benchmark runbook, five one-task steps (command, copy, lineinfile, stat, debug).
hosts: bench
params:
  version: {type: string, default: "1.0.0"}
---

# Bench

```yaml {name=probe kind=check}
- ansible.builtin.command: /bin/true
  changed_when: false
```

```yaml {name=write-config}
- ansible.builtin.copy:
    dest: "{{ state_dir }}/app.conf"
    content: "version={{ version }}\\nmode=normal\\n"
    mode: "0644"
```

```yaml {rollback=write-config}
- ansible.builtin.file:
    path: "{{ state_dir }}/app.conf"
    state: absent
```

```yaml {name=set-mode}
- ansible.builtin.lineinfile:
    path: "{{ state_dir }}/app.conf"
    regexp: "^mode="
    line: "mode=normal"
```

```yaml {rollback=set-mode}
- ansible.builtin.lineinfile:
    path: "{{ state_dir }}/app.conf"
    regexp: "^mode="
    state: absent
```

```yaml {name=stat-config kind=check}
- ansible.builtin.stat:
    path: "{{ state_dir }}/app.conf"
```

```yaml {name=report kind=check}
- ansible.builtin.debug:
    msg: "config written for {{ version }}"
```
"""

# What a person would write by hand for the same job: one play, Ansible's
# defaults (facts gathered, forks 5, no pipelining).
NAIVE_PLAYBOOK = """\
- name: bench (hand-written)
  hosts: bench
  vars:
    version: "1.0.0"
  tasks:
    - ansible.builtin.command: /bin/true
      changed_when: false
    - ansible.builtin.copy:
        dest: "{{ state_dir }}/app.conf"
        content: "version={{ version }}\\nmode=normal\\n"
        mode: "0644"
    - ansible.builtin.lineinfile:
        path: "{{ state_dir }}/app.conf"
        regexp: "^mode="
        line: "mode=normal"
    - ansible.builtin.stat:
        path: "{{ state_dir }}/app.conf"
    - ansible.builtin.debug:
        msg: "config written for {{ version }}"
"""


class BenchError(RuntimeError):
    """A measured command failed: its figure would be meaningless, so the bench stops."""


# --- helpers -----------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: this checkout first on PYTHONPATH, no colour."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ANSIBLE_NOCOLOR"] = "1"
    for key in ("ANSIBLE_CONFIG", "TECHNICIAN_OPS_PROJECT", "TECHNICIAN_OPS_AUDIT_URL", "TECHNICIAN_OPS_INVENTORY",
                "TECHNICIAN_OPS_STATE_DIR"):
        env.pop(key, None)
    env.update(extra)
    return env


# Peak memory of the last command ``timed`` ran, in MiB: the largest resident
# set of any one process of its tree (wait4's ru_maxrss covers the child and
# every descendant it waited for: ansible-playbook's workers, and for ``run``
# ansible-playbook itself).
last_peak_mib = 0.0
# Wall-clock time (time.time()) at which the last command ``timed`` ran was started: what a
# host-side timestamp (a file's mtime) is compared with.
last_started = 0.0


def timed(cmd: list[str], *, cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    """Wall time of one command in seconds; a failure aborts the bench with its output tail."""
    global last_peak_mib, last_started
    with tempfile.TemporaryFile("w+") as out:  # a file, not a pipe: nobody reads while we wait4
        last_started = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        last_peak_mib = usage.ru_maxrss / 1024.0  # KiB on Linux
        if proc.returncode not in ok:
            out.seek(0)
            tail = "\n".join(out.read().strip().splitlines()[-15:])
            raise BenchError(f"{' '.join(cmd)} exited {proc.returncode} (cwd {cwd}):\n{tail}")
    return elapsed


def tool(*args: str) -> list[str]:
    return [PYTHON, "-m", "technician_ops.cli", *args]


def ansible_playbook() -> str:
    path = Path(PYTHON).parent / "ansible-playbook"
    found = str(path) if path.exists() else shutil.which("ansible-playbook")
    if not found:
        raise BenchError("ansible-playbook not found next to this Python nor on PATH")
    return found


def compile_package() -> None:
    """Byte-compile the checkout's package, as pip does when it installs one.

    An editable install has no byte-code until Python writes it, and under
    PYTHONDONTWRITEBYTECODE (set in many containers) it never does: every start
    would compile the tool's modules again (about 20 ms of a lint), which an
    installed tool does not pay.  Stale files are rewritten, current ones kept.
    """
    import compileall

    if not compileall.compile_dir(str(REPO / "technician_ops"), quiet=1, rx=re.compile(r"remote_backup")):
        raise BenchError(f"byte-compiling {REPO / 'technician_ops'} failed")


def interleave(sides: dict[str, Callable[[], float]], reps: int, warmup: int = 1,
               peaks: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """A B, B A, A B ...: ``warmup`` unmeasured rounds, then ``reps`` measured ones (and their peak memory into ``peaks``).

    Every other round runs the sides in reverse, so no side always goes first
    (after the previous round's last side has left the page cache and the
    CPU in its own state) or always last.
    """
    samples: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(warmup + reps):
        for name in (order if i % 2 == 0 else order[::-1]):
            t = sides[name]()
            if i >= warmup:
                samples[name].append(t)
                if peaks is not None:
                    peaks.setdefault(name, []).append(last_peak_mib)
    return samples


def speed_probe() -> float:
    """Milliseconds of a fixed pure-Python workload (median of 3): how fast the machine is right now.

    Recorded before every section, so a report shows whether the machine
    itself changed speed during the run (on shared VMs it does, by tens of
    percent within minutes), which no ratio of a few percent survives.
    """
    times = []
    for _ in range(3):
        start = time.perf_counter()
        sum(i * i for i in range(300_000))
        times.append(time.perf_counter() - start)
    return ms(statistics.median(times))


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the p99 of 1000 samples is the 990th."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


# --- the temporary project ---------------------------------------------------------


class BenchProject:
    """A project with the bench runbook and an inventory of ``n`` hosts in group ``bench``.

    By default the hosts are local-connection hosts, each with a state dir of
    its own; ``hosts`` gives them instead (name -> host vars, e.g. SSH hosts
    of the test bed, see ssh.py).  ``before`` runs, untimed, before every
    measured command (ssh.py uses it to start each run cold).
    """

    def __init__(self, base: Path, n_hosts: int, *, hosts: dict[str, dict[str, Any]] | None = None,
                 label: str = "", before: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> None:
        tag = f"{label}{n_hosts}"
        self.root = base / f"project-{tag}"
        self.n = n_hosts
        self.before = before or (lambda: None)
        self.env = env or {}  # extra environment of every measured command
        (self.root / "runbooks").mkdir(parents=True)
        (self.root / "inventory").mkdir()
        (self.root / "runbooks" / "bench.md").write_text(BENCH_RUNBOOK)
        group_vars: dict[str, Any] = {}
        if hosts is None:
            hosts = {}
            for i in range(n_hosts):
                name = f"h{i:03d}"
                state = self.root / "hosts" / name
                state.mkdir(parents=True)
                hosts[name] = {"state_dir": str(state)}
            group_vars = {"ansible_connection": "local"}
        import yaml

        # A group of its own, so the bench inventory can grow other hosts without changing the runbook.
        inv = {"all": {"vars": group_vars, "children": {"bench": {"hosts": hosts}}}}
        self.inventory = self.root / "inventory" / "hosts.yml"
        self.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
        self.compiled = base / f"compiled-{tag}"
        timed(tool("--project", str(self.root), "compile", "bench", "-o", str(self.compiled)), cwd=self.root,
              env=child_env())
        self.naive_dir = base / f"naive-{tag}"
        self.naive_dir.mkdir()
        (self.naive_dir / "main.yml").write_text(NAIVE_PLAYBOOK)
        (self.naive_dir / "ansible.cfg").write_text("# Ansible's defaults\n[defaults]\n")

    def run_tool(self) -> float:
        self.before()
        return timed(tool("--project", str(self.root), "run", "bench", "--output", "json", "--yes"),
                     cwd=self.root, env=child_env(**self.env))

    def run_accelerated(self) -> float:
        """``run --accelerate``: mitogen's strategy (opt-in; the tool falls back to linear if unusable)."""
        self.before()
        return timed(tool("--project", str(self.root), "run", "bench", "--output", "json", "--yes", "--accelerate"),
                     cwd=self.root, env=child_env(**self.env))

    def run_raw(self) -> float:
        """The very playbook ``compile`` wrote, its ansible.cfg and both inventories."""
        self.before()
        env = child_env(ANSIBLE_CONFIG=str(self.compiled / "ansible.cfg"), **self.env)
        cmd = [ansible_playbook(), "-i", str(self.inventory), "-i", str(self.compiled / "controller-inventory.yml"),
               str(self.compiled / "project" / "main.yml")]
        return timed(cmd, cwd=self.compiled, env=env)

    def run_naive(self) -> float:
        """Ansible's defaults.  The interpreter is the same as the tool's, so only settings differ."""
        self.before()
        env = child_env(ANSIBLE_CONFIG=str(self.naive_dir / "ansible.cfg"), **self.env)
        cmd = [ansible_playbook(), "-i", str(self.inventory), "-i", str(self.compiled / "controller-inventory.yml"),
               str(self.naive_dir / "main.yml")]
        return timed(cmd, cwd=self.naive_dir, env=env)

    def run_raw_forks(self, forks: int) -> float:
        """The compiled playbook with only ``forks`` changed (to test a generated-config change)."""
        return self.run_raw_with(ANSIBLE_FORKS=str(forks))

    def run_raw_with(self, **settings: str) -> float:
        """The compiled playbook with Ansible settings changed through the environment (a candidate default)."""
        self.before()
        env = child_env(ANSIBLE_CONFIG=str(self.compiled / "ansible.cfg"), **{**self.env, **settings})
        cmd = [ansible_playbook(), "-i", str(self.inventory), "-i", str(self.compiled / "controller-inventory.yml"),
               str(self.compiled / "project" / "main.yml")]
        return timed(cmd, cwd=self.compiled, env=env)


def _pair(samples: dict[str, list[float]], a: str, b: str) -> dict[str, Any]:
    """Medians of both sides and their ratio (the figure), plus each round's own ratio.

    The rounds' ratios (``a`` against the ``b`` run next to it) show how much
    of a spread is the machine: their median is given for reading, the
    target is judged on the ratio of medians.
    """
    ma, mb = statistics.median(samples[a]), statistics.median(samples[b])
    rounds = [round(x / y, 4) for x, y in zip(samples[a], samples[b])]
    return {f"{a}_s": round(ma, 4), f"{b}_s": round(mb, 4), "ratio": round(ma / mb, 4),
            "round_ratios": rounds, "round_ratio_median": round(statistics.median(rounds), 4),
            "samples": {k: [round(v, 4) for v in vs] for k, vs in samples.items()}}
