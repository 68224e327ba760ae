"""engine/supervise.py on real processes: a stop leaves nothing behind, whatever the processes do."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from technician_ops.engine.runner_pty import SUPERVISE


def _alive(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [pid for pid in out.split() if int(pid) != os.getpid()]


def _supervise(script: str, *, grace: float = 1.0, parent: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-S", "-E", str(SUPERVISE), "-1", str(parent or os.getpid()), str(grace),
                             "--", "/bin/bash", "-c", script], start_new_session=True)


def test_a_stop_kills_every_descendant_even_one_in_its_own_session(tmp_path: Path) -> None:
    marker = f"tops-{uuid.uuid4().hex}"
    ready = tmp_path / "ready"
    # a daemon that left the process group and the session, one that ignores SIGTERM, and a plain child
    proc = _supervise(f"setsid bash -c 'exec -a {marker}-a sleep 60' & (trap '' TERM; exec -a {marker}-b sleep 60) & "
                      f"touch {ready}; exec -a {marker}-c sleep 60")
    deadline = time.monotonic() + 10
    while not (ready.exists() and len(_alive(marker)) >= 3):
        assert time.monotonic() < deadline, _alive(marker)
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) != 0
    assert _alive(marker) == []  # the one ignoring SIGTERM was killed after the grace period


def test_the_command_exit_code_is_relayed() -> None:
    assert _supervise("exit 7").wait(timeout=10) == 7


def test_a_dead_parent_stops_the_run_at_once() -> None:
    marker = f"tops-{uuid.uuid4().hex}"
    # the parent it is told about is not its parent: as if technician-ops died before the prctl
    proc = _supervise(f"exec -a {marker} sleep 60", parent=1)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    assert _alive(marker) == []


def test_what_a_finished_command_left_running_is_stopped_before_the_exit_code_is_relayed() -> None:
    marker = f"tops-{uuid.uuid4().hex}"
    proc = _supervise(f"(exec -a {marker} sleep 60) & exit 3")
    assert proc.wait(timeout=15) == 3
    assert _alive(marker) == []


def _lock_is_free(path: Path) -> bool:
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def test_two_stop_signals_at_once_still_stop_everything_before_the_lock_goes(tmp_path: Path) -> None:
    """technician-ops SIGKILLed: its pty hangs up (SIGHUP) and PR_SET_PDEATHSIG sends SIGTERM, together.
    The second signal once interrupted the stop the first began: the supervisor died at once, the lock
    with it, and the step ran on to its end."""
    marker = f"tops-{uuid.uuid4().hex}"
    ready, finished, lock = tmp_path / "ready", tmp_path / "finished", tmp_path / "run.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    script = f"trap '' TERM; touch {ready}; (exec -a {marker} sleep 30); touch {finished}"
    proc = subprocess.Popen([sys.executable, "-S", "-E", str(SUPERVISE), str(fd), str(os.getpid()), "1.0",
                             "--", "/bin/bash", "-c", script], pass_fds=(fd,), start_new_session=True)
    os.close(fd)  # the supervisor alone holds the lock now
    deadline = time.monotonic() + 10
    while not (ready.exists() and _alive(marker)):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.02)
    # Both pending before it runs again, as when a loaded machine schedules it late (SIGSTOP: no handler runs).
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGHUP)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    while proc.poll() is None:
        free = _lock_is_free(lock)  # first the lock, then the processes: free before, alive after, is a real overlap
        alive = _alive(marker)
        assert not (free and alive), f"the lock was free while the command's processes lived: {alive}"
        assert time.monotonic() < deadline + 15, "the supervisor never finished its stop"
        time.sleep(0.02)
    assert _alive(marker) == [], "the supervisor exited before the command's processes were gone"
    assert proc.returncode != 1, "the supervisor died of an exception, not of the stop"
    assert _lock_is_free(lock)
    assert not finished.exists()  # the command was stopped, not left to finish
