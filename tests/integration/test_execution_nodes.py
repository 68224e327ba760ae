"""Execution nodes on the SSH test bed (docs/nodes.md): two bed hosts run the other hosts' groups.

The bed: web1..web4, db1, db2 (sshd hosts in their own network and mount namespaces).  ``web3`` is
execution node ``site-a`` for group ``site_a`` (web1, db1); ``web4`` is ``site-b`` for ``site_b``
(web2, db2).  A node runs technician-ops from this checkout's own virtualenv (the bed shares every
path but the private ones, which here leave the checkout and the interpreter visible), and reaches its
hosts with the bed's key through its own view of the bed's state directory.  Every run goes through the
real CLI: the controller's master to each node, ansible-runner's transmit / worker / process over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.testbed import Testbed
from technician_ops.errors import ExitCode
from tests.support.testbed import brought_up, node_runtime, testbed_unavailable, worker_index

pytestmark = [pytest.mark.integration, pytest.mark.testbed]

REPO = Path(__file__).resolve().parents[2]
NODES = {"site-a": "web3", "site-b": "web4"}
SITES = {"site_a": ("site-a", ["web1", "db1"]), "site_b": ("site-b", ["web2", "db2"])}
SITE_HOSTS = ["web1", "db1", "web2", "db2"]
CANARY = "tops-node-canary-4b1d9e"


PYTHON, PRIVATE_PATHS = node_runtime(REPO)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    reason = testbed_unavailable()
    if reason:
        pytest.skip(reason)
    n = worker_index() or 0
    paths = PRIVATE_PATHS
    if "/srv" not in paths:
        pytest.skip("the checkout lies under /srv: the node bed needs /srv private to each host")
    bed = Testbed(tmp_path_factory.mktemp("nodebed"), hosts=6, prefix=f"tbn{n}", subnet=f"10.203.{41 + n}.0/24",
                  private_paths=paths)
    with brought_up(bed):
        yield bed


def inventory(bed: Testbed) -> str:
    """The nodes as the controller reaches them; each site's hosts as its node reaches them."""
    lines = []
    controller = (f"ansible_ssh_private_key_file={bed.key_path} ansible_ssh_common_args='-o UserKnownHostsFile="
                  f"{bed.known_hosts_path} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'")
    lines.append("[nodes]")
    for host in NODES.values():
        lines.append(f"{host} ansible_host={bed.host(host).address} ansible_user=root {controller}")
    for group, (node, hosts) in SITES.items():
        seen = f"/run/tops-testbed/{bed.host(NODES[node]).netns}"  # the bed's state dir, inside the node
        lines += ["", f"[{group}]"]
        for host in hosts:
            lines.append(f"{host} ansible_host={bed.host(host).address} ansible_user=root "
                         f"ansible_ssh_private_key_file={seen}/id_ed25519 ansible_ssh_common_args='-o UserKnownHostsFile="
                         f"{seen}/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes' "
                         "ansible_python_interpreter=/usr/bin/python3")
        lines += [f"[{group}:vars]", f"technician_ops_execution_node={node}"]
    return "\n".join(lines) + "\n"


def config(python: str = PYTHON, **extra: str) -> str:
    out = []
    for name, host in NODES.items():
        out += [f"[execution_nodes.{name}]", f'host = "{host}"', f"python = {json.dumps(extra.get(name, python))}", ""]
    return "\n".join(out)


def step(name: str, body: str, *, undo: str | None = None) -> str:
    text = f"```yaml {{name={name}}}\n{body.strip()}\n```\n\n"
    if undo is not None:
        text += f"```yaml {{rollback={name}}}\n{undo.strip()}\n```\n\n"
    return text


def stamp_step(name: str) -> str:
    """A step that stamps /srv/tops/NAME with the time, and an undo that logs "NAME TIME" and removes it."""
    return step(name, f'- ansible.builtin.shell: mkdir -p /srv/tops && date +%s%N > /srv/tops/{name}',
                undo=f'- ansible.builtin.shell: echo "{name} $(date +%s%N)" >> /srv/tops/undo.log '
                     f'&& rm -f /srv/tops/{name}')


HEAD = "---\nhosts: site_a:site_b\n---\n\n# Two sites\n\n"


@pytest.fixture
def project(tmp_path: Path, bed: Testbed) -> Iterator[Path]:
    root = tmp_path / "proj"
    (root / "runbooks").mkdir(parents=True)
    (root / "inventory").mkdir()
    (root / "inventory" / "hosts.ini").write_text(inventory(bed))
    (root / "technician-ops.toml").write_text(config())
    yield root
    for host in [h.name for h in bed.hosts]:
        shutil.rmtree(bed.private_dir(host, "/srv") / "tops", ignore_errors=True)


def cli(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(root), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TECHNICIAN_OPS_CONTROLLER": "ctl-test"})


def record(root: Path, run_id: str | None = None) -> dict:  # type: ignore[type-arg]
    proc = cli(root, "audit", "export")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return next(r for r in records if r["run_id"] == run_id) if run_id else records[-1]


def srv(bed: Testbed, host: str) -> Path:
    return bed.private_dir(host, "/srv") / "tops"


def undo_log(bed: Testbed, host: str) -> list[tuple[str, int]]:
    path = srv(bed, host) / "undo.log"
    return [(a, int(b)) for a, b in (line.split() for line in path.read_text().splitlines())] if path.exists() else []


def node_leftovers(bed: Testbed) -> list[str]:
    """What a run left on its nodes: session directories, and processes of technician-ops' agent."""
    found = []
    for node in NODES.values():
        for private in ("/tmp",) if "/tmp" in bed.state.private_paths else ():
            found += [str(p) for p in bed.private_dir(node, private).glob("tops-node-*")]
    procs = subprocess.run(["pgrep", "-af", "technician_ops.node_agent"], capture_output=True, text=True).stdout
    return found + [line for line in procs.splitlines() if "pgrep" not in line]


def wait_gone(bed: Testbed, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while node_leftovers(bed) and time.monotonic() < deadline:
        time.sleep(0.2)
    return node_leftovers(bed)


def test_a_failing_last_step_rolls_back_both_sites_in_reverse_order(project: Path, bed: Testbed) -> None:
    (project / "runbooks" / "two-sites.md").write_text(HEAD + stamp_step("s1") + stamp_step("s2") + step("s3", """
- ansible.builtin.command: /bin/false
  changed_when: false
  when: inventory_hostname == 'db2'
"""))
    proc = cli(project, "run", "two-sites")
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stdout + proc.stderr
    rec = record(project)
    assert rec["execution_nodes"] == "site-a,site-b"
    assert {n: sorted(v["hosts"]) for n, v in rec["nodes"].items()} == {"site-a": ["db1", "web1"],
                                                                       "site-b": ["db2", "web2"]}
    hosts = rec["steps"]["s1"]["hosts"]
    assert {h: hosts[h].get("node") for h in SITE_HOSTS} == {"web1": "site-a", "db1": "site-a", "web2": "site-b",
                                                            "db2": "site-b"}
    assert rec["steps"]["s3"]["hosts"]["db2"]["status"] == "failed"
    assert rec["rollback"]["outcome"] == "rolled_back" and rec["rollback"]["planned"] == ["s2", "s1"]
    logs = {h: undo_log(bed, h) for h in SITE_HOSTS}
    for host, entries in logs.items():  # each host: s2's undo, then s1's; nothing of the steps left
        assert [name for name, _ in entries] == ["s2", "s1"], (host, entries)
        assert not (srv(bed, host) / "s1").exists() and not (srv(bed, host) / "s2").exists()
    # The barrier: s2 was undone everywhere before s1 was undone anywhere (the bed shares one clock).
    assert max(t for e in logs.values() for n, t in e if n == "s2") < min(t for e in logs.values() for n, t in e
                                                                          if n == "s1")
    for node in NODES.values():  # nodes ran nothing of the sites on themselves
        assert not srv(bed, node).exists()
    assert wait_gone(bed) == []
    history = cli(project, "history", "--output", "json")
    newest = json.loads(history.stdout)[0]
    assert (newest["controller"], newest["nodes"]) == ("ctl-test", ["site-a", "site-b"])
    assert cli(project, "history").stdout.splitlines()[0].endswith(" on ctl-test via site-a,site-b")


def test_a_two_site_run_succeeds_and_says_where_each_host_ran(project: Path, bed: Testbed) -> None:
    (project / "runbooks" / "ok.md").write_text(HEAD + stamp_step("s1") + stamp_step("s2"))
    proc = cli(project, "run", "ok", "--output", "json")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    starts = [e["step"] for e in events if e["event"] == "step_start"]
    assert starts == ["s1", "s2"]  # one start per step, whatever the number of sites
    ends = [e for e in events if e["event"] == "step_end"]
    assert [(e["step"], e["status"], sorted(e["hosts"])) for e in ends] == [
        ("s1", "succeeded", sorted(SITE_HOSTS)), ("s2", "succeeded", sorted(SITE_HOSTS))]
    results = [e for e in events if e["event"] == "host_result"]
    assert {(e["step"], e["host"], e.get("node")) for e in results} == {
        (s, h, "site-a" if h in ("web1", "db1") else "site-b") for s in ("s1", "s2") for h in SITE_HOSTS}
    # Step s2 started everywhere only after s1 had ended everywhere.
    s1 = [int((srv(bed, h) / "s1").read_text()) for h in SITE_HOSTS]
    s2 = [int((srv(bed, h) / "s2").read_text()) for h in SITE_HOSTS]
    assert max(s1) < min(s2)
    assert wait_gone(bed) == []
    # Later, ``rollback RUN_ID`` undoes it through the same nodes, newest first.
    run_id = events[0]["run_id"]
    undo = cli(project, "rollback", run_id, "--yes")
    assert undo.returncode == ExitCode.OK, undo.stdout + undo.stderr
    rec = record(project)
    assert rec["rollback_of"] == run_id and rec["execution_nodes"] == "site-a,site-b"
    for host in SITE_HOSTS:
        assert [name for name, _ in undo_log(bed, host)] == ["s2", "s1"], host
        assert not (srv(bed, host) / "s1").exists() and not (srv(bed, host) / "s2").exists()
    assert wait_gone(bed) == []


def test_a_killed_worker_is_a_lost_node_and_a_human_is_needed(project: Path, bed: Testbed) -> None:
    (project / "runbooks" / "lost.md").write_text(HEAD + stamp_step("s1") + step("s2", """
- ansible.builtin.shell: mkdir -p /srv/tops && touch /srv/tops/s2-running && sleep 12
""", undo="- ansible.builtin.shell: echo \"s2 $(date +%s%N)\" >> /srv/tops/undo.log"))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(project), "run", "lost"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (srv(bed, "web2") / "s2-running").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "step s2 never started on web2"
            time.sleep(0.1)
        # The worker of site-b's run: the agent process on the node (the PID namespace is shared).
        pids = subprocess.run(["pgrep", "-f", "technician_ops.node_agent worker"], capture_output=True,
                              text=True).stdout.split()
        mine = [p for p in pids if _node_of(p, bed) == "web4"]
        assert mine, pids
        for pid in mine:
            os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.ROLLBACK_FAILED, out + err
    assert time.monotonic() - started < 120
    rec = record(project)
    failures = rec["rollback"]["failures"]
    assert {(f["host"], f.get("node")) for f in failures if f["step"] == "s1"} >= {("web2", "site-b"),
                                                                                   ("db2", "site-b")}
    assert any("site-b" in n["message"] and n.get("node") == "site-b" for n in rec["notices"])
    assert rec["steps"]["s2"]["hosts"]["web2"]["status"] == "unknown"
    for host in ("web1", "db1"):  # site A was rolled back
        assert [name for name, _ in undo_log(bed, host)] == ["s2", "s1"], host
    assert "execution node site-b was lost" in out + err
    assert wait_gone(bed, 30) == []
    # The killed worker's execution died with it on the node (its supervisor's PR_SET_PDEATHSIG).
    assert [p for p in _pids("ansible-playbook") if _node_of(p, bed) in NODES.values()] == []


def _pids(pattern: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()


def _node_of(pid: str, bed: Testbed) -> str | None:
    """The bed host whose network namespace ``pid`` runs in."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    for host in bed.hosts:
        try:
            sshd = (bed.host_dir(host) / "ssh" / "sshd.pid").read_text().strip()
            if os.readlink(f"/proc/{sshd}/ns/net") == ns:
                return host.name
        except OSError:
            continue
    return None


def test_an_unreachable_node_refuses_the_run_before_any_change(project: Path, bed: Testbed) -> None:
    (project / "runbooks" / "refused.md").write_text(HEAD + stamp_step("s1"))
    bed.stop_sshd("web4")
    try:
        proc = cli(project, "run", "refused")
    finally:
        bed.start_sshd("web4")
    assert proc.returncode == ExitCode.TEMPFAIL, proc.stdout + proc.stderr
    assert "execution node site-b" in proc.stderr and "not reachable" in proc.stderr
    assert record(project)["outcome"] == "refused"
    for host in SITE_HOSTS:
        assert not (srv(bed, host) / "s1").exists(), host
    assert wait_gone(bed) == []


def test_a_node_with_other_plugins_is_refused_with_both_versions(project: Path, bed: Testbed,
                                                                   tmp_path: Path) -> None:
    # site-b runs a copy of technician-ops whose gate plugin differs by one comment line.
    copy = tmp_path / "other"
    shutil.copytree(REPO / "technician_ops", copy / "technician_ops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    plugin = copy / "technician_ops" / "ansible_plugins" / "action" / "technician_ops_gate.py"
    plugin.write_text(plugin.read_text() + "# another build\n")
    if "/tmp" in bed.state.private_paths:  # the node sees its own /tmp: put the copy there
        target = bed.private_dir("web4", "/tmp") / "other"
        shutil.copytree(copy, target)
        copy = Path("/tmp/other")
    words = shlex.split(PYTHON)  # "env PYTHONPATH=... python3", or an interpreter alone
    search = words[1].split("=", 1)[1] if words[0] == "env" else ""
    python = f"env PYTHONPATH={copy}:{search} {words[-1]}"
    (project / "technician-ops.toml").write_text(config(**{"site-b": python}))
    (project / "runbooks" / "versions.md").write_text(HEAD + stamp_step("s1"))
    proc = cli(project, "run", "versions")
    assert proc.returncode == ExitCode.CONFIG, proc.stdout + proc.stderr
    from technician_ops.engine.nodes import plugins_digest

    assert "execution node site-b: plugins" in proc.stderr and plugins_digest() in proc.stderr
    for host in SITE_HOSTS:
        assert not (srv(bed, host) / "s1").exists(), host


def _hits(root: Path, *needles: str) -> list[str]:
    found = []
    for path in root.rglob("*") if root.exists() else []:
        if path.is_file() and not path.is_symlink() and not path.is_socket():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


@pytest.mark.parametrize("ending", ["failed", "worker_killed"])
def test_a_secret_reaches_no_disk_on_the_controller_or_the_nodes(project: Path, bed: Testbed, ending: str) -> None:
    (project / "runbooks" / "canary.md").write_text(f"""---
hosts: site_a:site_b
params:
  token: {{type: secret, required: true}}
---

```sh {{name=use undo=none}}
mkdir -p /srv/tops
printf '%s' "$TOKEN" | sha256sum > /srv/tops/used
echo "the token is $TOKEN"
env | cut -d= -f1 > /srv/tops/env-names
printf "%s" "${{TECHNICIAN_OPS_CONTROL_TOKEN:-}}${{TECHNICIAN_OPS_CONTROL_SOCKET:-}}" > /srv/tops/channel
```

```sh {{name=later undo=none}}
touch /srv/tops/later-running
{"sleep 8" if ending == "worker_killed" else "true"}
{"exit 3" if ending == "failed" else "true"}
```
""")
    env = {**os.environ, "TECHNICIAN_OPS_PARAM_TOKEN": CANARY, "VAULT_TOKEN": CANARY + "-vault"}
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(project), "run", "canary"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if ending == "worker_killed":
        deadline = time.monotonic() + 120
        while not (srv(bed, "db2") / "later-running").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        for pid in _pids("technician_ops.node_agent worker"):
            if _node_of(pid, bed) == "web4":
                os.kill(int(pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == (ExitCode.ROLLBACK_FAILED if ending == "worker_killed" else ExitCode.ROLLED_BACK), \
        out + err
    assert wait_gone(bed, 30) == []
    assert CANARY not in out + err
    # Every host's private trees (the nodes' work directories among them), the controller's state, /dev/shm.
    assert _hits(bed.state_dir / "hosts", CANARY) == []
    assert _hits(project / ".technician-ops", CANARY) == []
    assert _hits(Path("/dev/shm"), CANARY) == []
    for host in SITE_HOSTS:  # the step had the secret, and its tasks no channel or credential of the controller's
        assert (srv(bed, host) / "used").read_text().split()[0] == hashlib.sha256(CANARY.encode()).hexdigest()
        assert (srv(bed, host) / "channel").read_text() == ""
        assert "VAULT_TOKEN" not in (srv(bed, host) / "env-names").read_text().split()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stop_stops_every_site_and_undoes_what_ran(project: Path, bed: Testbed, how: str) -> None:
    (project / "runbooks" / "stop.md").write_text(HEAD + step("s1", """
- ansible.builtin.shell: mkdir -p /srv/tops && touch /srv/tops/s1-running && sleep 40
""", undo="- ansible.builtin.shell: echo \"s1 $(date +%s%N)\" >> /srv/tops/undo.log"))
    # Its own process group, as a terminal gives a command: Ctrl-C reaches every process of that group.
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(project), "run", "stop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((srv(bed, h) / "s1-running").exists() for h in SITE_HOSTS):
            assert time.monotonic() < deadline and proc.poll() is None, "s1 never ran everywhere"
            time.sleep(0.1)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:  # no node may look lost for it: each closes its stream and stops
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    rec = record(project)
    assert {h: rec["steps"]["s1"]["hosts"][h]["status"] for h in SITE_HOSTS} == dict.fromkeys(SITE_HOSTS, "unknown")
    assert rec["rollback"]["outcome"] == "rolled_back" and not any("lost" in n["message"] for n in rec["notices"])
    for host in SITE_HOSTS:  # stopped mid-step: undone everywhere, through each site's node
        assert [name for name, _ in undo_log(bed, host)] == ["s1"], host
    assert wait_gone(bed, 30) == []
    # Nothing of the step runs anywhere: not on the nodes, not on their hosts (the stop play ran there).
    assert [p for p in _pids("ansible-playbook") if _node_of(p, bed) is not None] == []
    assert [p for p in _pids("sleep 40") if _node_of(p, bed) is not None] == []
