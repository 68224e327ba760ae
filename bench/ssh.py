"""SSH sections of the bench (issue 22): the bench runbook over real sshd hosts.

The hosts are the project's SSH test bed (testbed/testbed.py): N OpenSSH
servers, each in its own network namespace, on this machine.  So the figures
include what users pay over SSH (key exchange, session set-up, module
transfer, one round trip per exchange) and, with ``slow_ms``, a WAN-like
latency added by the bed's relay on each host; they do not include a real
network's bandwidth limits, and controller and hosts share the CPUs.

Every measured run starts cold, as an on-call engineer's first run does: no
SSH master connection left by an earlier run (each side's control sockets
live in a directory of the bench's own and are closed before each run) and
the file the runbook writes absent on every host (so every run changes it,
and the time to the first change is a time the host itself records: the
file's mtime).
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any, Callable

import benchlib
from benchlib import BenchError, BenchProject, _pair, interleave

PREFIX, SUBNET = "bnch", "10.203.9.0/24"  # not the tests' bed (tbt*, 10.203.1.0/24, 10.203.1x.0/24)
STATE = "/srv/bench"  # a private path of every bed host: the runbook's state_dir


class Bed:
    """The SSH test bed for the bench: ``n`` hosts, always taken down."""

    def __init__(self, base: Path, n: int, log: Callable[[str], None]) -> None:
        from testbed.testbed import Testbed, TestbedError

        if os.geteuid() != 0:
            raise BenchError("the SSH sections need root: the test bed builds network namespaces")
        self.bed = Testbed(base / f"bed-{n}", hosts=n, prefix=PREFIX, subnet=SUBNET)
        log(f"SSH test bed: {n} sshd hosts (prefix {PREFIX}, {SUBNET})")
        self.bed.down(sweep=True)
        try:
            self.bed.up()
        except TestbedError as exc:
            raise BenchError(f"SSH test bed: {exc}") from None
        self.cp = base / "cp"  # every side's SSH control sockets (short: a socket path has 108 bytes)
        self.cp.mkdir(exist_ok=True, mode=0o700)

    def __enter__(self) -> Bed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_masters()
        self.bed.down(sweep=True)

    def hostvars(self) -> dict[str, dict[str, Any]]:
        """The bed's inventory (testbed.render_inventory's variables), with the runbook's state_dir."""
        common = (f"-o UserKnownHostsFile={self.bed.known_hosts_path} -o StrictHostKeyChecking=yes "
                  "-o IdentitiesOnly=yes")
        return {h.name: {"ansible_host": h.address, "ansible_port": 22, "ansible_user": "root",
                         "ansible_ssh_private_key_file": str(self.bed.key_path), "ansible_ssh_common_args": common,
                         "ansible_python_interpreter": "/usr/bin/python3", "state_dir": STATE}
                for h in self.bed.hosts}

    def conf_files(self) -> list[Path]:
        return [self.bed.private_dir(h, "/srv") / "bench" / "app.conf" for h in self.bed.hosts]

    def cold(self) -> None:
        """Before each measured run: no master connection alive, the runbook's file absent, its dir present."""
        self.close_masters()
        for path in self.conf_files():
            path.parent.mkdir(exist_ok=True)
            path.unlink(missing_ok=True)

    def close_masters(self) -> None:
        """Ask every master in the bench's control dir to exit (``ssh -O exit``), as a user's logout would."""
        for sock in self.cp.iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench-host"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            sock.unlink(missing_ok=True)

    def first_change_s(self) -> float | None:
        """Seconds from the start of the last measured command to the first host's change (its file's mtime)."""
        times = [p.stat().st_mtime for p in self.conf_files() if p.exists()]
        return round(min(times) - benchlib.last_started, 3) if times else None

    def slow(self, ms: int) -> None:
        for h in self.bed.hosts:
            self.bed.slow(h, ms)


# Candidate defaults, timed as the compiled playbook with one setting changed (--ssh-variants).
VARIANTS = {
    "free": {"ANSIBLE_STRATEGY": "free"},
    "forks10": {"ANSIBLE_FORKS": "10"},
    "no_pipelining": {"ANSIBLE_PIPELINING": "False"},
}


def bench_ssh(base: Path, n: int, reps: int, log: Callable[[str], None], *, slow_ms: int = 0,
              accelerate: bool = True, warmup: int = 1, variants: tuple[str, ...] = ()) -> dict[str, Any]:
    """run / raw / naive (/ run --accelerate), interleaved, over ``n`` sshd hosts (each ``slow_ms`` away);
    ``variants``: also the compiled playbook with one setting changed (VARIANTS)."""
    from technician_ops.engine import accelerate as accel

    usable = accel.check() if accelerate else None
    with Bed(base, n, log) as bed:
        if slow_ms:
            bed.slow(slow_ms)
        label = f"ssh{slow_ms}ms-" if slow_ms else "ssh-"
        # Ansible's own ControlPath, in the bench's dir: only the place changes, not what Ansible does.
        proj = BenchProject(base, n, hosts=bed.hostvars(), label=label, before=bed.cold,
                            env={"ANSIBLE_SSH_CONTROL_PATH_DIR": str(bed.cp)})
        firsts: dict[str, list[float]] = {}

        def measured(side: str, fn: Callable[[], float]) -> Callable[[], float]:
            def go() -> float:
                t = fn()
                first = bed.first_change_s()
                if first is None:
                    raise BenchError(f"{side}: no host changed its file ({n} SSH hosts)")
                firsts.setdefault(side, []).append(first)
                return t
            return go

        sides = {"run": measured("run", proj.run_tool), "raw": measured("raw", proj.run_raw),
                 "naive": measured("naive", proj.run_naive)}
        if usable is not None and usable.usable:
            sides["accelerate"] = measured("accelerate", proj.run_accelerated)
        for name in variants:
            sides[f"raw_{name}"] = measured(f"raw_{name}", functools.partial(proj.run_raw_with, **VARIANTS[name]))
        log(f"SSH{f' +{slow_ms} ms each way' if slow_ms else ''}: {' / '.join(sides)}, {n} host(s), {reps} reps")
        peaks: dict[str, list[float]] = {}
        samples = interleave(sides, reps, warmup, peaks)
    result: dict[str, Any] = {"hosts": n, "slow_ms": slow_ms, **_pair(samples, "run", "raw")}
    medians = {side: statistics.median(v) for side, v in samples.items()}
    result["medians_s"] = {side: round(v, 4) for side, v in medians.items()}
    result["vs_naive"] = _pair(samples, "run", "naive")
    result["run_vs_naive"] = result["vs_naive"]["ratio"]
    if "accelerate" in samples:
        result["accel_vs_naive"] = round(medians["accelerate"] / medians["naive"], 4)
        result["accel_vs_raw"] = round(medians["accelerate"] / medians["raw"], 4)
        result["accel_rounds_vs_naive"] = [round(a / b, 4) for a, b in zip(samples["accelerate"], samples["naive"])]
    elif usable is not None:
        result["accelerate_skipped"] = usable.reason
    # Warm-up rounds are not measured: keep only the measured rounds' first-change times.
    result["first_change_s"] = {side: round(statistics.median(v[-reps:]), 3) for side, v in firsts.items()}
    result["peak_mib"] = {side: round(statistics.median(v), 1) for side, v in peaks.items()}
    return result


NODES_PREFIX, NODES_SUBNET = "bnchn", "10.203.8.0/24"


def bench_nodes(base: Path, n: int, reps: int, log: Callable[[str], None], *, warmup: int = 1) -> dict[str, Any]:
    """``n`` SSH hosts from the controller alone vs the same hosts split over two execution nodes (issue 23),
    interleaved, each run cold (no master connection left on the controller or on a node)."""
    import yaml
    from testbed.testbed import Testbed, TestbedError

    if os.geteuid() != 0:
        raise BenchError("the SSH sections need root: the test bed builds network namespaces")
    from tests.support.testbed import node_runtime

    python, private = node_runtime(Path(__file__).resolve().parents[1])
    bed = Testbed(base / f"nodebed-{n}", hosts=n + 2, prefix=NODES_PREFIX, subnet=NODES_SUBNET, private_paths=private)
    log(f"SSH test bed: {n} sshd hosts + 2 execution nodes (prefix {NODES_PREFIX}, {NODES_SUBNET})")
    bed.down(sweep=True)
    try:
        bed.up()
    except TestbedError as exc:
        raise BenchError(f"SSH test bed: {exc}") from None
    try:
        hosts, nodes = bed.hosts[:n], bed.hosts[n:]
        cp = base / "cp-nodes"
        cp.mkdir(exist_ok=True, mode=0o700)

        def vars_for(h: Any, seen_from: str | None) -> dict[str, Any]:
            where = f"/run/tops-testbed/{seen_from}" if seen_from else str(bed.state_dir)
            return {"ansible_host": h.address, "ansible_port": 22, "ansible_user": "root",
                    "ansible_ssh_private_key_file": f"{where}/id_ed25519",
                    "ansible_ssh_common_args": f"-o UserKnownHostsFile={where}/known_hosts "
                                               "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
                    "ansible_python_interpreter": "/usr/bin/python3", "state_dir": STATE}

        def cold() -> None:
            for sock in cp.iterdir():
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench-host"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
                sock.unlink(missing_ok=True)
            for h in hosts:
                path = bed.private_dir(h, "/srv") / "bench" / "app.conf"
                path.parent.mkdir(exist_ok=True)
                path.unlink(missing_ok=True)

        env = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp)}
        alone = BenchProject(base, n, hosts={h.name: vars_for(h, None) for h in hosts}, label="nodes-alone-",
                             before=cold, env=env)
        split: dict[str, dict[str, Any]] = {}
        for i, h in enumerate(hosts):
            node = nodes[0] if i < n // 2 else nodes[1]
            split[h.name] = {**vars_for(h, node.netns),
                             "technician_ops_execution_node": "site-a" if node is nodes[0] else "site-b"}
        spread = BenchProject(base, n, hosts=split, label="nodes-split-", before=cold, env=env)
        inv = yaml.safe_load(spread.inventory.read_text())
        inv["all"]["children"]["nodes"] = {"hosts": {node.name: vars_for(node, None) for node in nodes}}
        spread.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
        (spread.root / "technician-ops.toml").write_text(
            "".join(f'[execution_nodes.{name}]\nhost = "{node.name}"\npython = "{python}"\n\n'
                    for name, node in (("site-a", nodes[0]), ("site-b", nodes[1]))))
        log(f"nodes: one controller / two execution nodes, {n} host(s), {reps} reps")
        peaks: dict[str, list[float]] = {}
        samples = interleave({"controller": alone.run_tool, "nodes": spread.run_tool}, reps, warmup, peaks)
    finally:
        bed.down(sweep=True)
    result: dict[str, Any] = {"hosts": n, "nodes": 2, "cpus": os.cpu_count(), **_pair(samples, "nodes", "controller")}
    result["medians_s"] = {side: round(statistics.median(v), 4) for side, v in samples.items()}
    result["peak_mib"] = {side: round(statistics.median(v), 1) for side, v in peaks.items()}
    return result
