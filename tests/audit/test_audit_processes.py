"""Real processes: a SIGKILLed writer is reaped, concurrent finishers keep the chain whole."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

from technician_ops.audit import AuditStore, open_store

from tests.audit.conftest import Backend
from tests.audit.helpers import make_header

WRITER = pathlib.Path(__file__).with_name("_writer.py")
REPO = pathlib.Path(__file__).resolve().parents[2]


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(WRITER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_sigkilled_writer_is_reaped_as_interrupted(backend: Backend) -> None:
    proc = _spawn("sigkill", backend.url or "", str(backend.project_root))
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    store = backend.open()  # open_store reaps
    rec = store.get(run_id)
    assert rec["outcome"] == "interrupted"
    assert rec["seq"] == 1 and rec["hash"]
    assert "died" in rec["reason"] and rec["reaped"]["by_pid"] == os.getpid()
    # What the killed process had written survives.
    assert rec["steps"]["promote"]["hosts"]["db2"]["changed"] is True
    assert store.verify().ok and store.verify().checked == 1
    assert store.reap_stale() == []  # nothing left to reap


def test_sigkill_after_flush_keeps_every_event_of_the_sink(backend: Backend) -> None:
    proc = _spawn("sigkill-sink", backend.url or "", str(backend.project_root), "300")
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    rec = backend.open().get(run_id)
    assert rec["outcome"] == "interrupted" and rec["events"] == 300
    assert [n["message"] for n in rec["notices"]] == [f"m{i}" for i in range(300)]


def test_live_runs_are_not_reaped(backend: Backend, store: AuditStore) -> None:
    header = make_header()
    store.start_run(header)  # this process is alive
    other = backend.open()
    assert other.reap_stale() == []
    assert other.get(header["run_id"])["outcome"] == "running"


def test_dead_pid_with_recycled_identity_is_reaped(backend: Backend, store: AuditStore) -> None:
    # A live pid whose start time differs from the recorded one is a different process.
    header = make_header()
    store.start_run(header)
    backend.raw("UPDATE runs SET writer_start = 'another-boot:1' WHERE run_id = ?", header["run_id"])
    assert store.reap_stale() == [header["run_id"]]
    assert store.get(header["run_id"])["outcome"] == "interrupted"


def test_runs_from_other_hosts_are_left_alone(backend: Backend, store: AuditStore) -> None:
    header = make_header()
    store.start_run(header)
    backend.raw("UPDATE runs SET writer_host = 'elsewhere', writer_pid = 999999999 WHERE run_id = ?",
                header["run_id"])
    assert store.reap_stale() == []


def test_concurrent_finishes_keep_the_chain_valid(backend: Backend, tmp_path: pathlib.Path) -> None:
    backend.open()  # create the schema before the race
    go = tmp_path / "go"
    per_process = 15
    procs = [_spawn("finish", backend.url or "", str(backend.project_root), str(per_process), str(go))
             for _ in range(2)]
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    store = backend.open()
    result = store.verify()
    assert result.ok, result
    assert result.checked == 2 * per_process
    seqs = sorted(r["seq"] for r in store.history(limit=100))
    assert seqs == list(range(1, 2 * per_process + 1))


def test_reap_via_open_store_on_default_path(tmp_path: pathlib.Path) -> None:
    proc = _spawn("sigkill", "", str(tmp_path))
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    proc.kill()
    proc.wait(timeout=10)
    store = open_store(None, tmp_path)
    try:
        assert store.get(run_id)["outcome"] == "interrupted"
    finally:
        store.close()
