"""The node's worker over plain pipes (no SSH): ansible-runner's transmit into ``node_agent worker``, its
stream read by ansible-runner's process, as engine/fanout.py runs it over a node's master connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: say
      ansible.builtin.debug: {{msg: "hello from the node"}}
    - name: wait
      ansible.builtin.shell: "touch {marker} && sleep {sleep}"
"""


def _session(tmp_path: Path) -> Path:
    session = Path(tempfile.mkdtemp(prefix="tops-node-", dir=tmp_path))
    (session / "session.pid").write_text(str(os.getpid()))
    for sub in ("cp", "tmp", "facts", "state"):
        (session / sub).mkdir()
    return session


def _job(tmp_path: Path, sleep: int) -> Path:
    job = tmp_path / "job"
    (job / "project").mkdir(parents=True)
    (job / "project" / "main.yml").write_text(PLAYBOOK.format(marker=tmp_path / "running", sleep=sleep))
    (job / "inventory").mkdir()
    (job / "inventory" / "hosts.ini").write_text("[none]\n")
    (job / "ansible.cfg").write_text("[defaults]\n")
    return job


def _run(tmp_path: Path, sleep: int, *, close_after: float | None = None) -> tuple[Any, ...]:
    from ansible_runner.interface import run

    session, job = _session(tmp_path), _job(tmp_path, sleep)
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.node_agent", "worker", "--session", str(session),
                             "--ident", "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "AWS_SECRET_ACCESS_KEY": "node-own-credential"})
    run(streamer="transmit", _output=proc.stdin, private_data_dir=str(job), playbook="main.yml", ident="run",
        inventory=str(job / "inventory"), technician_ops_inventory=["inventory/hosts.ini"],
        envvars={"TECHNICIAN_OPS_CONTROL_TOKEN": "tok-123"}, suppress_env_files=True, quiet=True,
        cancel_callback=lambda: False)
    assert proc.stdin is not None
    proc.stdin.flush()
    if close_after is not None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "running").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(close_after)
        proc.stdin.close()
    statuses: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    artifacts = tmp_path / "artifacts"
    processor = run(streamer="process", _input=proc.stdout, private_data_dir=str(job), artifact_dir=str(artifacts),
                    quiet=True, event_handler=lambda e: events.append(e) or False,
                    status_handler=lambda d, runner_config=None: statuses.append(d), cancel_callback=lambda: False)
    proc.wait(30)
    return processor, statuses, session, proc, events, artifacts


def test_a_job_round_trips_and_leaves_nothing_behind(tmp_path: Path) -> None:
    processor, statuses, session, proc, events, artifacts = _run(tmp_path, 0)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert [s["status"] for s in statuses] == ["starting", "running", "successful"]
    assert all("env" not in s for s in statuses)  # the execution's environment is never streamed back
    assert any(e.get("event") == "runner_on_ok" and "hello from the node" in json.dumps(e) for e in events)
    assert (artifacts / "rc").read_text().strip() == "0"
    assert not (artifacts / "command").exists()  # nor its command line and environment
    assert [p.name for p in session.iterdir() if p.name.startswith("run-")] == []  # its directory is gone
    assert not (session / "worker-run.pid").exists()
    everything = b"".join(p.read_bytes() for p in artifacts.rglob("*") if p.is_file())
    assert b"node-own-credential" not in everything


def test_closing_the_stream_stops_the_execution(tmp_path: Path) -> None:
    started = time.monotonic()
    processor, statuses, session, proc, events, artifacts = _run(tmp_path, 60, close_after=0.5)
    assert time.monotonic() - started < 40  # the 60 s task did not run out
    assert statuses[-1]["status"] in ("failed", "canceled")
    assert (artifacts / "rc").is_file()  # stopped, not lost: the worker said its last word
    leftover = subprocess.run(["pgrep", "-f", f"touch {tmp_path / 'running'}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
    assert [p.name for p in session.iterdir() if p.name.startswith("run-")] == []
