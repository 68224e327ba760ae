from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from technician_ops.errors import LockHeld
from technician_ops.engine.lock import RunLock
from technician_ops.engine.origin import origin


@pytest.mark.parametrize("env,system,run_id,url", [
    ({"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "42", "GITHUB_REPOSITORY": "acme/ops", "GITHUB_SERVER_URL": "https://github.com"},
     "github-actions", "42", "https://github.com/acme/ops/actions/runs/42"),
    ({"GITLAB_CI": "true", "CI_PIPELINE_ID": "7", "CI_JOB_URL": "https://gitlab.example/j/9"}, "gitlab-ci", "7", "https://gitlab.example/j/9"),
    ({"JENKINS_URL": "http://j/", "BUILD_TAG": "jenkins-ops-3", "BUILD_URL": "http://j/job/ops/3/"}, "jenkins", "jenkins-ops-3", "http://j/job/ops/3/"),
    ({"BUILDKITE": "true", "BUILDKITE_BUILD_ID": "b1", "BUILDKITE_BUILD_URL": "https://bk/b1"}, "buildkite", "b1", "https://bk/b1"),
    ({"CIRCLECI": "true", "CIRCLE_WORKFLOW_ID": "w1", "CIRCLE_BUILD_URL": "https://circle/1"}, "circleci", "w1", "https://circle/1"),
])
def test_ci_origin_is_detected(env: dict[str, str], system: str, run_id: str, url: str) -> None:
    got = origin(env, interactive=False)
    assert (got["type"], got["system"], got["run_id"], got["url"]) == ("ci", system, run_id, url)


def test_cron_terminal_and_script_origins() -> None:
    assert origin({"TECHNICIAN_OPS_ORIGIN": "cron"}, interactive=False)["type"] == "cron"
    assert origin({}, interactive=True)["type"] == "terminal"
    assert origin({}, interactive=False)["type"] == "script"


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first = RunLock(tmp_path, "pg-cluster")
    first.acquire()
    with pytest.raises(LockHeld) as exc:
        RunLock(tmp_path, "pg-cluster").acquire()
    assert f"pid {os.getpid()}" in exc.value.message
    first.release()
    RunLock(tmp_path, "pg-cluster").acquire()


def test_sigkilled_holder_frees_the_lock_at_once(tmp_path: Path) -> None:
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from technician_ops.engine.lock import RunLock; "
            "RunLock(__import__('pathlib').Path(sys.argv[2]), 'x').acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2]), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld):
        RunLock(tmp_path, "x").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    RunLock(tmp_path, "x").acquire()  # no stale lock: the kernel dropped it with the process
    assert time.monotonic() - started < 1.0


def test_wait_lock_waits_for_the_holder(tmp_path: Path) -> None:
    first = RunLock(tmp_path, "w")
    first.acquire()
    import threading

    threading.Timer(0.3, first.release).start()
    RunLock(tmp_path, "w").acquire(wait=5)
