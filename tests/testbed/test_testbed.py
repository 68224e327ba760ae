"""The SSH test bed itself: real sshd hosts that Ansible reaches, isolated
from each other, breakable on demand, and removed without a trace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from testbed.testbed import REPO_ROOT, RUN_ROOT, Host, Testbed, TestbedError

pytestmark = [pytest.mark.testbed, pytest.mark.integration]

ANSIBLE = Path(sys.executable).parent / "ansible"


def _tcp(address: str, timeout: float = 0.5) -> str:
    try:
        with socket.create_connection((address, 22), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"


def _netns_inodes(prefix: str) -> set[int]:
    """Kernel ids of the bed's network namespaces, to find processes still in them later."""
    return {p.stat().st_ino for p in Path("/run/netns").glob(f"{prefix}-*")}


def _processes_in(inodes: set[int]) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ns = os.readlink(proc / "ns" / "net")
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(ns[ns.index("[") + 1 : -1]) in inodes and cmd:  # zombies have no command line
            found.append(f"{proc.name} {cmd}")
    return found


def _leftovers(prefix: str, inodes: Iterable[int] = ()) -> list[str]:
    """Namespaces, links, processes and mount points of a bed with this prefix still on the machine."""
    found = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith(f"{prefix}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [line.split(":")[1].strip() for line in links.splitlines() if f" {prefix}-" in line]
    procs = subprocess.run(["pgrep", "-af", f"{RUN_ROOT}/{prefix}-"], capture_output=True, text=True)
    found += procs.stdout.splitlines()
    found += _processes_in(set(inodes))
    found += [str(p) for p in RUN_ROOT.glob(f"{prefix}-*")]
    return found


def test_inventory_groups_and_strict_host_keys(testbed: Testbed) -> None:
    text = testbed.inventory_path.read_text()
    assert "[web]\nweb1 " in text
    assert "[db]\ndb1 " in text and "\ndb2 " in text
    assert "StrictHostKeyChecking=yes" in text
    assert "StrictHostKeyChecking=no" not in text
    assert f"UserKnownHostsFile={testbed.known_hosts_path}" in text
    known = testbed.known_hosts_path.read_text().splitlines()
    assert sorted(line.split()[0] for line in known) == sorted(h.address for h in testbed.hosts)
    assert oct(testbed.key_path.stat().st_mode & 0o777) == "0o600"


def test_ansible_reaches_every_host_over_ssh(testbed: Testbed, tmp_path: Path) -> None:
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_LOCAL_TEMP=str(tmp_path),
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"))
    proc = subprocess.run(
        [str(ANSIBLE), "all", "-i", str(testbed.inventory_path), "-o", "-m", "ansible.builtin.command",
         "-a", "ip -4 -o addr show dev eth0"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for h in testbed.hosts:
        mine = [line for line in lines if line.startswith(f"{h.name} |")]
        assert len(mine) == 1 and "CHANGED" in mine[0], proc.stdout
        # the command ran in the host's own network namespace
        assert f"inet {h.address}/" in mine[0]


def test_private_paths_are_per_host(testbed: Testbed) -> None:
    token = uuid.uuid4().hex
    db1, web1 = testbed.host("db1"), testbed.host("web1")
    wrote = testbed.ssh(db1, f"echo {token} > /srv/marker && echo {token} > ~/marker && echo {token} > /tmp/marker")
    assert wrote.returncode == 0, wrote.stderr
    seen = testbed.ssh(web1, "cat /srv/marker ~/marker /tmp/marker 2>/dev/null; echo $HOME")
    assert token not in seen.stdout
    assert seen.stdout.strip().endswith("/root")
    again = testbed.ssh(db1, "cat /srv/marker ~/marker")
    assert again.stdout.split() == [token, token]
    assert (testbed.private_dir(db1, "/srv") / "marker").read_text().strip() == token
    assert not Path("/srv/marker").exists()  # the machine's own /srv is untouched


def test_hosts_have_no_route_out(testbed: Testbed) -> None:
    h = testbed.host("web1")
    routes = subprocess.run(["ip", "-n", h.netns, "-4", "route", "show"], capture_output=True, text=True).stdout
    assert "default" not in routes
    assert routes.strip().startswith(testbed.state.subnet.split("/")[0].rsplit(".", 1)[0])


def test_hosts_reach_each_other(testbed: Testbed) -> None:
    """db1 can open a TCP connection to db2's sshd: what replication needs."""
    db2 = testbed.host("db2")
    probe = f"import socket; socket.create_connection(('{db2.address}', 22), timeout=3).close()"
    proc = testbed.ssh("db1", f'/usr/bin/python3 -c "{probe}"')
    assert proc.returncode == 0, proc.stderr


def test_faults_break_and_heal(testbed_faults: Testbed) -> None:
    bed = testbed_faults
    h = bed.host("web1")
    bed.stop_sshd(h)
    assert _tcp(h.address) == "refused"
    bed.start_sshd(h)
    assert _tcp(h.address) == "open"

    bed.link_down(h)
    assert _tcp(h.address) == "silent"
    bed.link_up(h)
    assert _tcp(h.address) == "open"

    bed.slow(h, 250)
    with socket.create_connection((h.address, 22), timeout=5) as sock:
        start = time.monotonic()
        banner = sock.recv(64)
        delay = time.monotonic() - start
    assert banner.startswith(b"SSH-2.0-")
    assert 0.2 < delay < 1.5
    slow_run = bed.ssh(h, "echo slow")
    assert slow_run.stdout.strip() == "slow"
    bed.fast(h)
    start = time.monotonic()
    assert bed.ssh(h, "true").returncode == 0
    assert time.monotonic() - start < 2.0


def test_fault_on_unknown_host_names_the_hosts(testbed: Testbed) -> None:
    with pytest.raises(TestbedError, match="web1"):
        testbed.stop_sshd("nope")


class _FailingBed(Testbed):
    """Fails while starting the second host, after the first one runs."""

    def start_sshd(self, host: Host | str) -> None:
        if self.host(host).name == "db1":
            raise TestbedError("injected failure")
        super().start_sshd(host)


def test_failed_up_leaves_nothing(tmp_path: Path) -> None:
    bed = _FailingBed(tmp_path / "bed", hosts=2, prefix="tbf", subnet="10.203.2.0/24")
    with pytest.raises(TestbedError, match="injected"):
        bed.up()
    assert _leftovers("tbf") == []
    assert not (tmp_path / "bed").exists()


def test_cli_up_fault_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "cli"
    env = dict(os.environ, TOPS_TESTBED_PREFIX="tbc", TOPS_TESTBED_SUBNET="10.203.3.0/24")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO_ROOT / "testbed" / args[0]), *args[1:]], capture_output=True,
                              text=True, env=env, timeout=60)

    up = cli("up", "--hosts", "2", "--dir", str(state))
    assert up.returncode == 0, up.stderr
    assert "web1" in up.stdout and "db1" in up.stdout
    bed = Testbed(state)
    assert [h.name for h in bed.hosts] == ["web1", "db1"]
    # a live session, a stopped sshd, a cut link and a slow relay: down removes all of it
    session = subprocess.Popen(
        ["ssh", "-i", str(bed.key_path), "-o", f"UserKnownHostsFile={bed.known_hosts_path}",
         "-o", "BatchMode=yes", "-F", "/dev/null", "root@" + bed.host("db1").address, "sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        assert cli("fault", "--dir", str(state), "web1", "slow", "50").returncode == 0
        assert cli("fault", "--dir", str(state), "db1", "stop-sshd").returncode == 0
        assert _tcp(bed.host("db1").address) == "refused"
        assert cli("fault", "--dir", str(state), "web1", "link-down").returncode == 0
        bad = cli("fault", "--dir", str(state), "web1", "slow")
        assert bad.returncode == 1 and "needs MS" in bad.stderr
        inodes = _netns_inodes("tbc")
        assert len(inodes) == 2
        assert any("relay.py" in p for p in _processes_in(inodes))  # the check can see what it looks for
        assert any("sshd" in p for p in _processes_in(inodes))
        down = cli("down", "--dir", str(state))
        assert down.returncode == 0, down.stderr
        assert _leftovers("tbc", inodes) == []
        assert not state.exists()
        assert session.wait(timeout=10) != 0  # its sshd died with the host
        again = cli("down", "--dir", str(state))  # idempotent
        assert again.returncode == 0, again.stderr
    finally:
        session.kill()
        Testbed(state, prefix="tbc").down(sweep=True)
