"""The supervisor of one Ansible execution: nothing of a run outlives it.

ansible-runner starts this script on its pty instead of ``ansible-playbook``
(``runner_pty``); it starts ``ansible-playbook`` as its child and relays its
exit code.  It is the "child subreaper" of everything below it
(``PR_SET_CHILD_SUBREAPER``): a process that Ansible, a module or a step's
script starts stays its descendant even when its own parent exits or it
starts a new session, so none can slip away.  It is there for these:

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
- **One stop, whatever signals come.**  A killed technician-ops sends two
  at once (its pty's hangup, SIGHUP, and ``PR_SET_PDEATHSIG``'s SIGTERM):
  only the first interrupts (``_Stop``); later ones find the stop under way.
  An interrupt in the middle of the stop would end this process and release
  the lock with the run still going.
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


# One _Stop per process.  A second stop signal raising _Stop again would interrupt the stop under way
# (even signal.signal() runs a pending handler first) and end this process with the run still going.
_armed = [True]


def _raise_stop(signum: int, frame: object) -> None:
    try:
        _armed.pop()  # one C call: of two handlers, even nested ones, only one gets past it
    except IndexError:
        return  # already stopping: that stop covers this signal too
    raise _Stop(signum)


def _stop_now(signum: int) -> _Stop:
    _armed.clear()
    return _Stop(signum)


def _descendants(me: int) -> list[int]:
    """Live descendants of ``me`` (zombies are dead: they are reaped as they come), to signal.

    A snapshot of /proc, so it can miss a process forked while it reads; whether
    any is left is ``_reap_all``'s answer, not this one's."""
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


def _reap_all(child: subprocess.Popen[bytes] | None) -> bool:
    """Wait for every child that has exited; True when no child is left at all.

    We are the subreaper: a descendant whose parent exits becomes our child, so
    no child left means no descendant left, with no /proc snapshot to miss one.
    ``child``'s exit code is kept when it is reaped here."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        if child is not None and pid == child.pid and child.returncode is None:
            child.returncode = os.waitstatus_to_exitcode(status)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_all(child: subprocess.Popen[bytes] | None, grace: float) -> None:
    """TERM every descendant, KILL what is left after ``grace``, return when none is left."""
    _armed.clear()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    me = os.getpid()
    _signal_all(_descendants(me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _reap_all(child):
        if time.monotonic() >= deadline:
            _signal_all(_descendants(me), signal.SIGKILL)
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
            raise _stop_now(signal.SIGTERM)
        child = subprocess.Popen(command)  # the lock fd is not passed on
        rc = child.wait()
        if not _reap_all(child):  # a step left something running (a `cmd &` on a local host): it goes too
            stop_all(child, grace)
        return rc
    except _Stop as stop:
        # Wherever the stop came, even inside Popen with ``child`` not yet set: whatever was started goes.
        stop_all(child, grace)
        if child is not None and child.returncode is not None:
            return child.returncode
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main(sys.argv))
