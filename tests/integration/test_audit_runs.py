"""Every run leaves exactly one record, whatever its outcome (real runs, SQLite store)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from technician_ops.api import RunRequest, run
from technician_ops.audit import open_store
from technician_ops.errors import ApprovalMissing, ExitCode, LockHeld

pytestmark = pytest.mark.integration


def store_for(demo):  # type: ignore[no-untyped-def]
    return open_store(None, demo.root)


def test_rolled_back_run_record(demo) -> None:  # type: ignore[no-untyped-def]
    store = store_for(demo)
    result = run(RunRequest("release-with-healthcheck", {"release": "r1"}), demo.project(), [], audit=store)
    record = store.get(result.run_id)
    assert record["outcome"] == "rolled_back" and record["runbook"] == "release-with-healthcheck"
    assert record["params"] == {"release": "r1", "healthy": False}
    assert record["steps"]["ship"]["hosts"]["web1"]["status"] == "changed"
    assert record["steps"]["health-check"]["hosts"]["web2"]["status"] == "failed"
    assert "unhealthy after release r1" in record["steps"]["health-check"]["hosts"]["web2"]["error"]
    assert record["rollback"]["planned"] == ["ship", "save-previous"]
    assert record["rollback"]["outcome"] == "rolled_back"
    assert record["runbook_sha256"] and record["operator"]["user"]
    assert Path(record["artifact_dir"]).is_dir()
    assert store.verify().ok
    store.close()


def test_refused_and_skipped_runs_are_recorded(demo) -> None:  # type: ignore[no-untyped-def]
    store = store_for(demo)
    with pytest.raises(ApprovalMissing):
        run(RunRequest("restart-with-approval", {"reason": "x"}), demo.project(), [], audit=store)
    lock_path = demo.root / ".technician-ops" / "locks" / "deploy-config.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockHeld) as exc:
            run(RunRequest("deploy-config"), demo.project(), [], audit=store)
        assert exc.value.exit_code == ExitCode.TEMPFAIL
    rows = store.history()
    assert [r["outcome"] for r in rows] == ["skipped", "refused"]
    assert "locked" in store.get(rows[0]["run_id"])["reason"]
    assert store.verify().ok
    store.close()


def test_sigkilled_run_is_recorded_as_interrupted(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("slow", "---\nhosts: web1\n---\n\n```yaml {name=nap kind=check}\n"
                       "- ansible.builtin.command: sleep 60\n```\n")
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "run", "slow",
                             "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the step is running
        if b'"step_start"' in line:
            break
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = store_for(demo)  # opening reaps records of dead writers
    rows = store.history("slow")
    assert len(rows) == 1 and rows[0]["outcome"] == "interrupted"
    record = store.get(rows[0]["run_id"])
    assert record["steps"]["nap"]["status"] == "running"  # the record shows where it died
    assert store.verify().ok
    store.close()


def test_sigterm_is_interrupted_by_the_run_itself(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("slow2", "---\nhosts: web1\n---\n\n```yaml {name=nap kind=check}\n"
                       "- ansible.builtin.command: sleep 60\n```\n")
    proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "run", "slow2",
                             "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b'"step_start"' in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
    assert b'"outcome": "interrupted"' in rest
    store = store_for(demo)
    assert store.history("slow2")[0]["outcome"] == "interrupted"
    store.close()


def test_secret_reaches_no_file_console_or_record(demo) -> None:  # type: ignore[no-untyped-def]
    secret = "leak-canary-" + os.urandom(8).hex()
    demo.write_runbook("secretive", "---\nhosts: web\nparams:\n  token: {type: secret, required: true}\n---\n\n"
                       "```yaml {name=use kind=check}\n- ansible.builtin.command: echo {{ token }}\n"
                       "- ansible.builtin.fail: {msg: 'bad {{ token }}'}\n```\n")
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "run", "secretive",
                           "--output", "json"], capture_output=True, env={**os.environ, "TECHNICIAN_OPS_PARAM_TOKEN": secret},
                          timeout=120)
    assert proc.returncode == ExitCode.FAILED
    assert secret.encode() not in proc.stdout + proc.stderr
    files = [p for p in demo.root.rglob("*") if p.is_file()]
    assert any(p.name == "audit.db" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    store = store_for(demo)
    record = store.get(store.history("secretive")[0]["run_id"])
    assert record["params"]["token"] == "********"
    store.close()
