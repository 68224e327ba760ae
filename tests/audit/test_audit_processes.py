"""Real processes: a SIGKILLed writer is reaped, concurrent finishers keep the chain whole."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections import Counter

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


def test_concurrent_controllers_keep_one_valid_chain(backend: Backend, tmp_path: pathlib.Path) -> None:
    """A team's store: 4 controller processes finishing 50 runs each at once keep ONE chain, lose nothing,
    and ``history`` says which controller ran each run."""
    backend.open()  # create the schema before the race
    go = tmp_path / "go"
    controllers, per_process = [f"ctl-{n}" for n in range(4)], 50
    procs = [_spawn("finish", backend.url or "", str(backend.project_root), str(per_process), str(go), name)
             for name in controllers]
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    store = backend.open()
    result = store.verify()
    assert result.ok, result
    total = len(controllers) * per_process
    assert result.checked == total
    rows = store.history(limit=1000)
    assert sorted(r["seq"] for r in rows) == list(range(1, total + 1))
    assert {r["outcome"] for r in rows} == {"succeeded"}
    assert Counter(r["controller"] for r in rows) == {name: per_process for name in controllers}
    # Every run's own record holds what its controller wrote, in the order it wrote it.
    mine = store.history(limit=1000, controller="ctl-2")
    assert len(mine) == per_process and {r["controller"] for r in mine} == {"ctl-2"}
    messages = sorted(store.get(r["run_id"])["notices"][0]["message"] for r in mine)
    assert messages == sorted(f"ctl-2 {i}" for i in range(per_process))
    # Each controller's runs were sealed in the order it finished them: their seqs rise with its count.
    for name in controllers:
        by_seq = sorted((r for r in rows if r["controller"] == name), key=lambda r: r["seq"])
        assert [int(store.get(r["run_id"])["notices"][0]["message"].split()[1]) for r in by_seq] == list(range(per_process))


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
