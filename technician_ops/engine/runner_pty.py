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

import types

import pexpect


class ReapedSpawn(pexpect.spawn):
    """``pexpect.spawn`` whose ``close`` does not sleep for a child already reaped."""

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
