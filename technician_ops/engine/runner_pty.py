"""ansible-runner's pty child, without pexpect's fixed sleep after it exited.

ansible-runner reads its ``ansible-playbook`` child through a pty until the
child is gone, then closes it.  pexpect's close sleeps 0.1 s first ("give the
kernel time to update process status") before it checks whether the child
still needs terminating: wall time every execution (run, rollback, recover)
paid after Ansible had finished.  ansible-runner has no setting for it, so the
``pexpect`` that ansible-runner's runner module calls is given a ``spawn``
that skips the sleep when the child was already reaped.  A live child is
closed, and terminated, exactly as before.  Only ansible-runner's reference
changes; ``pexpect`` itself is untouched for anyone else.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect

SUPERVISE = Path(__file__).resolve().parent / "supervise.py"


@dataclass
class Supervision:
    """How the next execution on this thread is supervised (``supervise.py``), and its pid once started."""

    lock_fd: int = -1  # the run lock's descriptor, held by the supervisor too; -1: none
    grace: float = 5.0  # seconds between SIGTERM and SIGKILL when stopping
    pid: int | None = None


_local = threading.local()


def supervise(supervision: Supervision | None) -> None:
    """Set (or clear, with None) the supervision of the executions started on this thread."""
    _local.supervision = supervision


class ReapedSpawn(pexpect.spawn):
    """``pexpect.spawn`` whose ``close`` does not sleep for a child already reaped, and whose child
    is ``supervise.py`` running the command when this thread asked for supervision."""

    def _spawnpty(self, args: list[str], **kwargs: Any) -> Any:
        supervision: Supervision | None = getattr(_local, "supervision", None)
        if supervision is None:
            return super()._spawnpty(args, **kwargs)
        fd = supervision.lock_fd
        args = [sys.executable, "-S", "-E", str(SUPERVISE), str(fd), str(os.getpid()), str(supervision.grace), "--",
                *args]
        if fd >= 0:
            before = kwargs.get("preexec_fn")

            def inherit_lock() -> None:  # in the child, before exec
                if before is not None:
                    before()
                os.set_inheritable(fd, True)

            kwargs["pass_fds"] = (fd,)
            kwargs["preexec_fn"] = inherit_lock
        ptyproc = super()._spawnpty(args, **kwargs)
        supervision.pid = ptyproc.pid
        return ptyproc

    def close(self, force: bool = True) -> None:
        if not self.closed and not self.isalive():  # exited and waited for: nothing to give time to
            self.ptyproc.delayafterclose = 0
        super().close(force=force)


def spawn_without_close_delay() -> bool:
    """Point ansible-runner at ``ReapedSpawn``; True if it is (now or already)."""
    import ansible_runner.runner as runner_module

    current = getattr(runner_module, "pexpect", None)
    if getattr(current, "spawn", None) is ReapedSpawn:
        return True
    if current is not pexpect:  # ansible-runner no longer calls pexpect this way: leave it alone
        return False
    shim = types.ModuleType("pexpect", "pexpect, with ReapedSpawn as spawn (technician_ops.engine.runner_pty)")
    shim.__dict__.update({k: v for k, v in vars(pexpect).items() if not k.startswith("__")})
    shim.spawn = ReapedSpawn  # type: ignore[attr-defined]
    runner_module.pexpect = shim
    return True
