"""ansible-runner's pty child closes without pexpect's sleep once it has exited."""

from __future__ import annotations

import pexpect
import pytest

from technician_ops.engine.runner_pty import ReapedSpawn, spawn_without_close_delay


def _reaped(child: ReapedSpawn) -> None:
    child.expect(pexpect.EOF, timeout=10)
    while child.isalive():  # EOF comes a moment before the exit status
        child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=0.05)


def test_ansible_runner_calls_the_reaped_spawn_and_pexpect_itself_is_untouched() -> None:
    import ansible_runner.runner as runner_module

    assert spawn_without_close_delay() is True
    assert runner_module.pexpect.spawn is ReapedSpawn
    assert pexpect.spawn is not ReapedSpawn
    # everything else ansible-runner uses is pexpect's own
    assert runner_module.pexpect.EOF is pexpect.EOF
    assert runner_module.pexpect.exceptions is pexpect.exceptions
    assert spawn_without_close_delay() is True  # a second execution finds it in place
    assert runner_module.pexpect.spawn is ReapedSpawn


def test_an_exited_child_is_closed_without_the_sleep_and_keeps_its_exit_status() -> None:
    child = ReapedSpawn("/bin/sh", ["-c", "echo done; exit 3"], encoding="utf-8")
    _reaped(child)
    child.close()
    assert child.ptyproc.delayafterclose == 0
    assert child.closed
    assert child.exitstatus == 3
    assert "done" in (child.before or "")


def test_a_live_child_is_still_given_time_and_terminated() -> None:
    child = ReapedSpawn("/bin/sleep", ["30"], encoding="utf-8")
    assert child.isalive()
    child.close()
    assert child.ptyproc.delayafterclose == pytest.approx(0.1)
    assert not child.isalive()
    assert child.signalstatus is not None  # it was killed, not left running
