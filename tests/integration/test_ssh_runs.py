"""Runs over the SSH test bed: real sshd hosts in their own network namespaces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from technician_ops.api import RunRequest, run
from technician_ops.errors import DependencyUnavailable
from technician_ops.events import Outcome
from technician_ops.project import load_project

pytestmark = [pytest.mark.integration, pytest.mark.testbed]

MARKER = "/srv/technician-ops-test"

WRITE_ALL = f"""---
hosts: all
---

```yaml {{name=write}}
- ansible.builtin.file: {{path: {MARKER}, state: directory, mode: "0755"}}
- ansible.builtin.copy: {{dest: {MARKER}/owner, content: "{{{{ inventory_hostname }}}}\\n"}}
```

```yaml {{rollback=write}}
- ansible.builtin.file: {{path: {MARKER}, state: absent}}
```
"""


@pytest.fixture
def ssh_project(tmp_path: Path, testbed_faults):  # type: ignore[no-untyped-def]
    root = tmp_path / "proj"
    (root / "runbooks").mkdir(parents=True)
    (root / "inventory").mkdir()
    shutil.copy(testbed_faults.inventory_path, root / "inventory" / "hosts.ini")
    yield root
    for host in testbed_faults.hosts:
        shutil.rmtree(testbed_faults.private_dir(host, "/srv") / "technician-ops-test", ignore_errors=True)
        (testbed_faults.private_dir(host, "/srv") / "technician-ops-test-finished").unlink(missing_ok=True)


def marker(testbed, host) -> Path:  # type: ignore[no-untyped-def]
    return testbed.private_dir(host, "/srv") / "technician-ops-test" / "owner"


def go(root: Path, name: str, **kw):  # type: ignore[no-untyped-def]
    from technician_ops.outputs.console import TextView

    return run(RunRequest(name, run_id=f"ssh-{name}", **kw), load_project(root, environ={}), [TextView()])


def test_success_on_every_host_with_its_own_state(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    (ssh_project / "runbooks" / "write.md").write_text(WRITE_ALL)
    result = go(ssh_project, "write")
    assert result.outcome is Outcome.SUCCEEDED
    names = [h.name for h in testbed_faults.hosts]
    assert len(names) == 3
    for host in testbed_faults.hosts:
        assert marker(testbed_faults, host).read_text() == f"{host.name}\n"  # each host wrote its own file


def test_host_down_before_the_run_is_refused_by_preflight(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    (ssh_project / "runbooks" / "write.md").write_text(WRITE_ALL)
    victim = testbed_faults.hosts[1]
    testbed_faults.stop_sshd(victim)
    from technician_ops.audit import new_run_id, open_store

    store = open_store(None, ssh_project)
    run_id = new_run_id()
    with pytest.raises(DependencyUnavailable) as exc:
        run(RunRequest("write", run_id=run_id), load_project(ssh_project, environ={}), [], audit=store)
    assert victim.name in exc.value.message and "refused" in exc.value.message
    for host in testbed_faults.hosts:
        assert not marker(testbed_faults, host).exists()  # nothing changed anywhere
    assert not (ssh_project / ".technician-ops" / "runs").exists()
    record = store.get(run_id)  # still exactly one record, saying why
    assert record["outcome"] == "refused" and victim.name in record["reason"]
    store.close()


def test_host_key_mismatch_is_refused(ssh_project, testbed_faults, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (ssh_project / "runbooks" / "write.md").write_text(WRITE_ALL)
    known = tmp_path / "known_hosts"
    lines = testbed_faults.known_hosts_path.read_text().splitlines()
    first_key = lines[0].split(None, 1)[1]
    victim_addr = lines[1].split(None, 1)[0]
    lines[1] = f"{victim_addr} {first_key}"  # another host's key for this address
    known.write_text("\n".join(lines) + "\n")
    inv = ssh_project / "inventory" / "hosts.ini"
    inv.write_text(inv.read_text().replace(str(testbed_faults.known_hosts_path), str(known)))
    with pytest.raises(DependencyUnavailable) as exc:
        go(ssh_project, "write")
    assert "host_key_mismatch" in exc.value.message or "host key" in exc.value.message.lower()


def test_host_cut_off_mid_run_rolls_back_the_others(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    victim = testbed_faults.hosts[2]
    (ssh_project / "runbooks" / "cut.md").write_text(WRITE_ALL + """
```text {name=gate kind=approve}
continue?
```

```yaml {name=after kind=check}
- ansible.builtin.command: "true"
```
""")

    def prompt(step: str, text: str) -> bool:
        testbed_faults.link_down(victim)  # the host drops off the network between two steps
        return True

    result = go(ssh_project, "cut", prompt=prompt)
    assert result.outcome is Outcome.ROLLBACK_FAILED
    assert result.failed_step == "after"
    failed_hosts = {f["host"] for f in result.rollback["failures"]}
    assert failed_hosts == {victim.name}
    testbed_faults.link_up(victim)
    for host in testbed_faults.hosts:
        if host.name != victim.name:
            assert not marker(testbed_faults, host).exists()  # undone where reachable
    assert marker(testbed_faults, victim).exists()  # could not be undone: the record says so


def test_serial_step_stops_after_the_first_failed_batch(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    hosts = [h.name for h in testbed_faults.hosts]
    (ssh_project / "runbooks" / "rolling.md").write_text(f"""---
hosts: all
---

```yaml {{name=roll serial=1}}
- ansible.builtin.file: {{path: {MARKER}, state: directory}}
- ansible.builtin.copy: {{dest: {MARKER}/owner, content: "{{{{ inventory_hostname }}}}\\n"}}
- ansible.builtin.fail: {{msg: batch failed}}
  when: inventory_hostname == "{hosts[1]}"
```

```yaml {{rollback=roll}}
- ansible.builtin.file: {{path: {MARKER}, state: absent}}
```
""")
    result = go(ssh_project, "rolling")
    assert result.outcome is Outcome.ROLLED_BACK and result.failed_step == "roll"
    assert not marker(testbed_faults, hosts[0]).exists()  # the first batch ran and changed: undone
    assert not marker(testbed_faults, hosts[1]).exists()  # the failed batch changed before failing: undone
    assert not marker(testbed_faults, hosts[2]).exists()  # never started
    assert result.rollback["steps"] == ["roll"]  # one undo of the step, on both batches' hosts


SLOW_SSH = WRITE_ALL + f"""
```yaml {{name=slow}}
- ansible.builtin.shell: |
    touch {MARKER}/started
    trap '' TERM HUP
    sleep 30
    touch {MARKER}-finished
```

```yaml {{rollback=slow}}
- ansible.builtin.file: {{path: {MARKER}/started, state: absent}}
```

```yaml {{name=third}}
- ansible.builtin.copy: {{dest: {MARKER}/third, content: "3\\n"}}
```

```yaml {{rollback=third}}
- ansible.builtin.file: {{path: {MARKER}/third, state: absent}}
```
"""


def test_sigterm_over_ssh_stops_the_remote_task_before_the_undo(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    """sshd does not signal a command whose connection went away: the leftovers are killed by their
    run marker on each host before the undo, so nothing of the stopped step completes afterwards."""
    import signal
    import subprocess
    import sys
    import time

    (ssh_project / "runbooks" / "slow.md").write_text(SLOW_SSH)
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(ssh_project), "run", "slow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = {h.name: testbed_faults.private_dir(h, "/srv") / "technician-ops-test" for h in testbed_faults.hosts}
    deadline = time.monotonic() + 90
    while not all((d / "started").exists() for d in base.values()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    # Past the step's sleep (30 s: long enough that a loaded machine's stop, ~20 s seen, still comes first).
    time.sleep(max(0.0, started + 32 - time.monotonic()))
    for name, d in base.items():
        finished = d.parent / "technician-ops-test-finished"  # outside what the undo removes
        assert not finished.exists(), f"{name}: the stopped task completed after the stop"
        assert not (d / "third").exists(), name
        assert not d.exists(), f"{name}: write was not undone"
