"""ssh_masters: the master's command line, its remote script, and which hosts get one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from technician_ops.engine import ssh_masters
from technician_ops.engine.preflight import HostKeyPolicy, HostSpec
from technician_ops.plan.ansible_config import BaseConfig
from technician_ops.plan.files import SSH_ARGS, effective_ssh_args


def spec(**kw) -> HostSpec:  # type: ignore[no-untyped-def]
    return HostSpec(**{"name": "web1", "address": "10.0.0.5", "port": 2222, "user": "deploy",
                       "key_file": Path("/keys/id"), **kw})


def test_the_master_runs_ssh_as_ansible_would_with_its_own_options_first(tmp_path: Path) -> None:
    m = ssh_masters.Masters(tmp_path, "-o ProxyJump=bastion " + SSH_ARGS)
    argv = m.argv(spec(ssh_args="-o UserKnownHostsFile=/kh -o ControlMaster=no"), 5, become=False)
    assert argv[:7] == ["ssh", "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-o", "BatchMode=yes"]
    # ssh keeps an option's first value: ours beat the config's ControlMaster=auto and the host's =no
    assert argv.index("ControlMaster=yes") < argv.index("ControlMaster=auto") < argv.index("ControlMaster=no")
    for option in ("ProxyJump=bastion", "Port=2222", "IdentityFile=/keys/id", "User=deploy", "UserKnownHostsFile=/kh"):
        assert option in argv
    assert argv[-4:-2] == [f"ControlPath={tmp_path}/%C", "--"] and argv[-2] == "10.0.0.5"


def test_host_ssh_args_replace_the_configs_and_no_host_key_checking_is_passed_on(tmp_path: Path) -> None:
    m = ssh_masters.Masters(tmp_path, SSH_ARGS)
    argv = m.argv(spec(ssh_args_override="-o Compression=yes", host_key_policy=HostKeyPolicy.OFF), 5, become=False)
    assert "ControlMaster=auto" not in argv and "Compression=yes" in argv and "StrictHostKeyChecking=no" in argv


def test_who_gets_a_master() -> None:
    assert ssh_masters.usable(spec())
    assert not ssh_masters.usable(spec(connection="paramiko"))
    assert not ssh_masters.usable(spec(password=True))
    assert not ssh_masters.usable(spec(ssh_executable="/opt/ssh"))
    assert not ssh_masters.usable(spec(ssh_args="-o ControlPath=/theirs/%C"))


def test_the_effective_ssh_args_keep_the_teams_first_and_drop_host_key_off(tmp_path: Path) -> None:
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[ssh_connection]\nssh_args = -o ProxyJump=bastion -o StrictHostKeyChecking=no\n")
    from technician_ops.plan import ansible_config

    base = ansible_config.read(cfg)
    assert isinstance(base, BaseConfig)
    args = effective_ssh_args(base)
    assert args.startswith("-o ProxyJump=bastion") and args.endswith(SSH_ARGS) and "StrictHostKeyChecking" not in args
    assert effective_ssh_args(None) == SSH_ARGS


def _remote(tmp_path: Path, sudo_says: str | None) -> str:
    """The master's remote script run by sh here, with a fake sudo on PATH (or none), stdin closed."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    if sudo_says is not None:
        (bindir / "sudo").write_text(f"#!/bin/sh\necho '{sudo_says}' >&2\nexit 1\n")
        (bindir / "sudo").chmod(0o755)
    for tool in ("grep", "cat"):
        os.symlink(subprocess.check_output(["sh", "-c", f"command -v {tool}"], text=True).strip(), bindir / tool)
    script = ssh_masters._REMOTE_BECOME.format(ready=ssh_masters.READY.decode(),
                                               requiretty=ssh_masters.REQUIRETTY.decode())
    return subprocess.run(["/bin/sh", "-c", script], env={"PATH": str(bindir)}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=10).stdout


def test_the_remote_script_reports_sudo_requiretty(tmp_path: Path) -> None:
    out = _remote(tmp_path, "sudo: sorry, you must have a tty to run sudo")
    assert out.split() == ["technician-ops-requiretty", "technician-ops-ready"]


def test_the_remote_script_is_ready_without_requiretty_or_sudo(tmp_path: Path) -> None:
    assert _remote(tmp_path / "a", "sudo: a password is required").split() == ["technician-ops-ready"]
    assert _remote(tmp_path / "b", None).split() == ["technician-ops-ready"]
