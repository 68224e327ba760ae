"""The supervisor of one Ansible execution: nothing of a run outlives it.

ansible-runner starts this script on its pty instead of ``ansible-playbook``
(``runner_pty``); it starts ``ansible-playbook`` as its child and relays its
exit code.  It is the "child subreaper" of everything below it
(``PR_SET_CHILD_SUBREAPER``): a process that Ansible, a module or a step's
script starts stays its descendant even when its own parent exits or it
starts a new session, so none can slip away.  It is there for three things:

- **Stop means stopped.**  On SIGTERM, SIGINT or SIGHUP (technician-ops
  stopping the run: a signal from the operator, the runbook's ``timeout:``)
  it sends SIGTERM to every descendant, gives them ``GRACE`` seconds, sends
  SIGKILL to what is left, and exits only when none is left.
  technician-ops waits for that before it records or rolls back anything.
- **technician-ops killed outright (SIGKILL) stops the run too.**  The
  kernel sends this process SIGTERM when its parent dies
  (``PR_SET_PDEATHSIG``), and the stop above follows: no later step starts.
- **Nothing is left behind.**  When ``ansible-playbook`` exits, whatever it
  left running below it (a step's ``cmd &`` on a local host, an SSH
  connection kept for reuse) is stopped the same way before this exits.
- **The run's lock is held until then.**  technician-ops hands this process
  its lock file descriptor (``FD``); the kernel keeps the flock while any
  holder has it open, so a second run of the runbook waits (or is refused)
  until the last process of this one is gone.

It runs as a plain script (``python -S -E supervise.py FD PARENT GRACE --
ARGV...``): the standard library only, no import of technician_ops, so it
costs an execution a few milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_POLL = 0.05


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _descendants(me: int) -> list[int]:
    """Live descendants of ``me`` (zombies are dead: they are reaped as they come)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], list(children.get(me, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _reap_all() -> None:
    """Wait for every child that has exited (orphans come to us: we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_all(child: subprocess.Popen[bytes], grace: float) -> None:
    """TERM every descendant, KILL what is left after ``grace``, return when none is left."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    me = os.getpid()
    _signal_all(_descendants(me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        try:
            child.poll()
        except ChildProcessError:
            pass
        _reap_all()
        left = _descendants(me)
        if not left:
            return
        if time.monotonic() >= deadline:
            _signal_all(left, signal.SIGKILL)
        time.sleep(_POLL)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[4] != "--":
        print("usage: supervise.py LOCK_FD PARENT_PID GRACE -- ARGV...", file=sys.stderr)
        return 64
    parent, grace, command = int(argv[2]), float(argv[3]), argv[5:]
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    child: subprocess.Popen[bytes] | None = None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() != parent:  # technician-ops died before the line above: stop now
            raise _Stop(signal.SIGTERM)
        child = subprocess.Popen(command)  # the lock fd is not passed on
        rc = child.wait()
        if _descendants(os.getpid()):  # a step left something running (a `cmd &` on a local host): it goes too
            stop_all(child, grace)
        return rc
    except _Stop as stop:
        if child is not None:
            stop_all(child, grace)
            return child.returncode if child.returncode is not None else 128 + stop.signum
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main(sys.argv))
