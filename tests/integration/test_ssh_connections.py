"""The run's SSH connections (engine/ssh_masters.py) over the SSH test bed: one per host per run,
reused by every execution, gone when the run ends, even when technician-ops is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from technician_ops.api import RunRequest, run
from technician_ops.events import Outcome
from technician_ops.project import load_project
from tests.integration.test_ssh_runs import MARKER, ssh_project  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.testbed]

DIR = MARKER  # test_ssh_runs.ssh_project removes it after each test

# Two steps, then a failure: the forward execution and the undo execution both reach every host.
FAILS_LAST = f"""---
hosts: all
---

```yaml {{name=first}}
- ansible.builtin.file: {{path: {DIR}, state: directory, mode: "0755"}}
```

```yaml {{rollback=first}}
- ansible.builtin.file: {{path: {DIR}, state: absent}}
```

```yaml {{name=second}}
- ansible.builtin.copy: {{dest: {DIR}/second, content: "2\\n"}}
```

```yaml {{rollback=second}}
- ansible.builtin.file: {{path: {DIR}/second, state: absent}}
```

```yaml {{name=breaks}}
- ansible.builtin.fail: {{msg: "the last step breaks"}}
```
"""

SLOW = f"""---
hosts: all
---

```yaml {{name=slow}}
- ansible.builtin.shell: mkdir -p {DIR} && touch {DIR}/started && sleep 60
```

```yaml {{rollback=slow}}
- ansible.builtin.file: {{path: {DIR}, state: absent}}
```
"""


def accepted(bed) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Per host, the SSH logins its sshd has accepted so far (its log, LogLevel INFO)."""
    out = {}
    for h in bed.hosts:
        log = bed.host_dir(h) / "ssh" / "sshd.log"
        out[h.name] = log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0
    return out


def run_masters(bed: Any) -> list[str]:
    """Command lines of live ssh processes to ``bed``'s hosts whose control socket is in a run's directory
    (another test's runs, on another worker's bed, are not this test's business)."""
    addresses = [f" {h.address} " for h in bed.hosts]
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and "ControlPath=" in cmd and "/tops-ssh-" in cmd and any(a in f"{cmd} " for a in addresses):
            found.append(cmd)
    return found


def test_a_run_connects_once_per_host_and_its_undo_reuses_it(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    (ssh_project / "runbooks" / "fails.md").write_text(FAILS_LAST)
    before = accepted(testbed_faults)
    from technician_ops.outputs.console import TextView

    result = run(RunRequest("fails", run_id="conn-fails"), load_project(ssh_project, environ={}), [TextView()])
    assert result.outcome is Outcome.ROLLED_BACK
    assert result.rollback["steps"] == ["second", "first"]
    for h in testbed_faults.hosts:
        assert not (testbed_faults.private_dir(h, "/srv") / "technician-ops-test").exists(), h.name
    after = accepted(testbed_faults)
    # Preflight, three steps and the undo execution: one login per host, the one preflight opened.
    assert {h: after[h] - before[h] for h in after} == {h.name: 1 for h in testbed_faults.hosts}
    assert run_masters(testbed_faults) == []
    cfg = (ssh_project / ".technician-ops" / "runs" / "conn-fails" / "ansible.cfg").read_text()
    assert "control_path = %(directory)s/%%C" in cfg
    control_dir = next(line.split("=", 1)[1].strip() for line in cfg.splitlines() if line.startswith("control_path_dir"))
    assert Path(control_dir).name.startswith("tops-ssh-") and not Path(control_dir).exists()


def test_the_callers_control_path_does_not_take_the_runs_connections_elsewhere(ssh_project, testbed_faults,
                                                                               tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (ssh_project / "runbooks" / "fails.md").write_text(FAILS_LAST)
    elsewhere = tmp_path / "cp"
    elsewhere.mkdir()
    before = accepted(testbed_faults)
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(ssh_project), "run", "fails"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(elsewhere)})
    assert proc.returncode == 3, proc.stdout + proc.stderr  # rolled back
    after = accepted(testbed_faults)
    assert {h: after[h] - before[h] for h in after} == {h.name: 1 for h in testbed_faults.hosts}
    assert list(elsewhere.iterdir()) == []
    assert run_masters(testbed_faults) == []


def test_killed_outright_its_connections_die_with_it(ssh_project, testbed_faults) -> None:  # type: ignore[no-untyped-def]
    (ssh_project / "runbooks" / "slow.md").write_text(SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(ssh_project), "run", "slow"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = [testbed_faults.private_dir(h, "/srv") / "technician-ops-test" / "started" for h in testbed_faults.hosts]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in started):
        assert time.monotonic() < deadline and proc.poll() is None, "the slow step never started everywhere"
        time.sleep(0.1)
    assert run_masters(testbed_faults), "the run holds no connection of its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while run_masters(testbed_faults) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_masters(testbed_faults) == []
    from technician_ops.engine import ssh_masters

    # Its directory could not be removed by the killed run: the next run's start does (this one's, or
    # one that another test started meanwhile).
    mine = f"{ssh_masters.PREFIX}{proc.pid}-*"
    fresh = ssh_masters.control_dir()
    try:
        assert list(Path(tempfile.gettempdir()).glob(mine)) == []
    finally:
        fresh.rmdir()
