"""Preflight: every target host answers SSH and lets us in, before anything changes.

A run that discovers an unreachable host half-way has already changed the
hosts before it; rolling back is then the best case.  So before the first
mutating step, the run resolves its targets from the inventory and opens one
SSH session to each with paramiko, using the same user, port, key and
known_hosts that Ansible will use.  Problems are classified (``Reason``) so the
message says *why* (refused, timeout, auth failed, host key mismatch...) and
the operator knows whether to start sshd, fix the network or the key.

Checks run concurrently: a fleet of unreachable hosts costs one timeout, not
one per host.  Nothing here prints or logs key material.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import shlex
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from technician_ops.errors import ConfigError, DependencyUnavailable
from technician_ops.engine.inventory import SSH_CONNECTIONS

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
DEFAULT_KNOWN_HOSTS = (Path("~/.ssh/known_hosts"), Path("/etc/ssh/ssh_known_hosts"))


class Reason(enum.Enum):
    """Why a host failed preflight; the value is what the message shows."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    HOST_KEY_MISMATCH = "host_key_mismatch"
    HOST_KEY_UNKNOWN = "host_key_unknown"
    OTHER = "other"


class HostKeyPolicy(enum.Enum):
    """OpenSSH's StrictHostKeyChecking, reduced to what preflight can act on."""

    STRICT = "yes"  # unknown and changed keys both fail (the default, as in OpenSSH's "yes")
    ACCEPT_NEW = "accept-new"  # unknown keys pass (not written back), changed keys fail
    OFF = "no"  # no host key verification at all


@dataclass(frozen=True)
class HostSpec:
    """How to reach one host, as the inventory says Ansible will."""

    name: str
    address: str
    port: int = 22
    user: str | None = None  # None: the local user, as ssh does
    key_file: Path | None = None  # None: paramiko tries ~/.ssh/id_* and the agent
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    # How Ansible's ssh plugin would run ssh there (ssh_masters.py opens the run's connection that way).
    connection: str = "ssh"
    ssh_args: str = ""  # ansible_ssh_common_args + ansible_ssh_extra_args
    ssh_args_override: str | None = None  # ansible_ssh_args: replaces ansible.cfg's ssh_args for this host
    password: bool = False  # a password (sshpass), not a key
    ssh_executable: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class HostProblem:
    host: HostSpec
    reason: Reason
    message: str

    def __str__(self) -> str:
        return f"{self.host.name} ({self.host.endpoint}): {self.reason.value}: {self.message}"


class _UnknownHostKey(Exception):
    pass


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Paramiko's RejectPolicy raises a bare SSHException; ours is classifiable."""

    def __init__(self, where: str) -> None:
        self.where = where

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(f"no {key.get_name()} host key for {hostname} in {self.where}")


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def check_host(spec: HostSpec, timeout: float = DEFAULT_TIMEOUT) -> HostProblem | None:
    """Connect and authenticate to one host; ``None`` when it is fine."""
    try:
        sock = socket.create_connection((spec.address, spec.port), timeout=timeout)
    except ConnectionRefusedError:
        return HostProblem(spec, Reason.REFUSED, "connection refused: is sshd running on that port?")
    except socket.timeout:
        return HostProblem(spec, Reason.TIMEOUT, f"no answer within {timeout:g}s: host down or cut off?")
    except socket.gaierror as exc:
        return HostProblem(spec, Reason.UNREACHABLE, f"cannot resolve {spec.address}: {exc.strerror}")
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN):
            return HostProblem(spec, Reason.UNREACHABLE, os.strerror(exc.errno).lower())
        return HostProblem(spec, Reason.OTHER, f"connect failed: {exc}")

    if spec.key_file is not None and not spec.key_file.is_file():
        sock.close()
        return HostProblem(spec, Reason.OTHER, f"private key file {spec.key_file} does not exist")
    started = time.monotonic()
    client = paramiko.SSHClient()
    try:
        if spec.host_key_policy is HostKeyPolicy.OFF:
            client.set_missing_host_key_policy(_AcceptUnknown())
        else:
            problem = _load_known_hosts(client, spec)
            if problem is not None:
                return problem
            client.set_missing_host_key_policy(
                _RejectUnknown(str(spec.known_hosts or "~/.ssh/known_hosts"))
                if spec.host_key_policy is HostKeyPolicy.STRICT else _AcceptUnknown()
            )
        client.connect(
            spec.address,
            port=spec.port,
            username=spec.user or _local_user(),
            key_filename=str(spec.key_file) if spec.key_file else None,
            look_for_keys=spec.key_file is None,
            allow_agent=spec.key_file is None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            sock=sock,
        )
        return None
    except _UnknownHostKey as exc:
        return HostProblem(spec, Reason.HOST_KEY_UNKNOWN, f"{exc}; add it (ssh-keyscan) after checking it")
    except paramiko.BadHostKeyException as exc:
        return HostProblem(
            spec,
            Reason.HOST_KEY_MISMATCH,
            f"host key changed ({exc.key.get_name()} {exc.key.fingerprint}), known_hosts has "
            f"{exc.expected_key.fingerprint}: possible impersonation, or the host was rebuilt",
        )
    except paramiko.AuthenticationException as exc:
        return HostProblem(spec, Reason.AUTH_FAILED, f"user {spec.user or _local_user()!r} not accepted: {exc}")
    except socket.timeout:
        return HostProblem(spec, Reason.TIMEOUT, f"SSH handshake took longer than {timeout:g}s")
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # SSHClient gives up waiting for the handshake after `timeout` without
        # saying so (auth then fails with "No existing session"); the transport
        # knows whether the key exchange finished and what stopped it.
        transport = client.get_transport()
        cause: BaseException = exc
        if transport is not None and not transport.initial_kex_done:
            cause = transport.get_exception() or exc
            if time.monotonic() - started >= timeout * 0.95:
                return HostProblem(spec, Reason.TIMEOUT, f"SSH handshake did not finish within {timeout:g}s")
        if isinstance(cause.__context__, socket.timeout) or "timed out" in str(cause).lower():
            return HostProblem(spec, Reason.TIMEOUT, f"SSH handshake did not finish within {timeout:g}s")
        return HostProblem(spec, Reason.OTHER, f"SSH failed: {cause or type(cause).__name__}")
    finally:
        client.close()
        sock.close()


def _load_known_hosts(client: paramiko.SSHClient, spec: HostSpec) -> HostProblem | None:
    files = [spec.known_hosts] if spec.known_hosts else [p.expanduser() for p in DEFAULT_KNOWN_HOSTS]
    for path in files:
        if not path.exists():
            continue
        try:
            client.load_host_keys(str(path))
        except (OSError, paramiko.SSHException) as exc:
            return HostProblem(spec, Reason.OTHER, f"cannot read known_hosts {path}: {exc}")
    return None


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def check_hosts(
    hosts: Sequence[HostSpec], timeout: float = DEFAULT_TIMEOUT, max_workers: int = 32
) -> list[HostProblem]:
    """Check every host concurrently; the problems come back in input order."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(hosts))),
                            thread_name_prefix="preflight") as pool:
        results = list(pool.map(lambda h: check_host(h, timeout), hosts))
    problems = [p for p in results if p is not None]
    for p in problems:
        log.info("preflight: %s", p)
    return problems


def ensure_reachable(hosts: Sequence[HostSpec], timeout: float = DEFAULT_TIMEOUT,
                     max_workers: int = 32) -> None:
    """Raise ``DependencyUnavailable`` naming every bad host, one per line."""
    problems = check_hosts(hosts, timeout=timeout, max_workers=max_workers)
    if problems:
        raise unreachable(problems, len(hosts))


def unreachable(problems: Sequence[HostProblem], total: int) -> DependencyUnavailable:
    """The refusal naming every bad host, one per line."""
    noun = "host" if len(problems) == 1 else "hosts"
    lines = [f"preflight: {len(problems)} of {total} {noun} not reachable over SSH; nothing was changed"]
    lines += [f"  {p}" for p in problems]
    return DependencyUnavailable("\n".join(lines), hint="fix the hosts and run again, or pass --skip-preflight to run anyway")


# ------------------------------------------------------------------ inventory


def hosts_from_inventory(inventory_path: Path | str | Iterable[Path | str], pattern: str) -> list[HostSpec]:
    """Resolve an Ansible host pattern with Ansible's own inventory code and
    read each host's connection variables the way the ssh plugin would.

    Hosts whose connection is not SSH (``local``, containers, winrm) are
    skipped: there is nothing to preflight.  Ansible is imported here, not at
    module import, because loading it costs about a second.
    """
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    sources = [str(inventory_path)] if isinstance(inventory_path, (str, Path)) else [str(p) for p in inventory_path]
    for src in sources:
        if not Path(src).exists():
            raise ConfigError(f"inventory {src} does not exist")
    loader = DataLoader()
    try:
        inventory = InventoryManager(loader=loader, sources=sources)
        variables = VariableManager(loader=loader, inventory=inventory)
    except AnsibleError as exc:
        raise ConfigError(f"cannot read inventory {', '.join(sources)}: {exc}") from None
    return hosts_from_manager(inventory, variables, loader, pattern, what=", ".join(sources))


def specs(inventory: Any, pattern: str) -> list[HostSpec]:
    """The SSH hosts of ``inventory`` (an ``inventory.Inventory``) matching ``pattern``, ready to check."""
    loaded = inventory.ansible()
    return hosts_from_manager(loaded.manager, loaded.variables, loaded.loader, pattern,
                              what=", ".join(map(str, inventory.paths)))


def hosts_from_manager(inventory: Any, variables: Any, loader: Any, pattern: str, *, what: str = "inventory") -> list[HostSpec]:
    """``hosts_from_inventory`` over an inventory the caller has already loaded.

    ``run`` loads the inventory anyway (to check the targets); parsing it a
    second time here cost a run ~30 ms plus a second pass over every source.
    ``inventory``, ``variables`` and ``loader`` are Ansible's
    ``InventoryManager``, ``VariableManager`` and ``DataLoader``.
    """
    from ansible.errors import AnsibleError
    from ansible.template import Templar

    try:
        matched = inventory.get_hosts(pattern)
    except AnsibleError as exc:
        raise ConfigError(f"cannot read inventory {what}: {exc}") from None

    specs = []
    for host in matched:
        hostvars = variables.get_vars(host=host, include_hostvars=False)
        templar = Templar(loader=loader, variables=hostvars)

        def var(*names: str, default: Any = None, hv: dict[str, Any] = hostvars, t: Templar = templar) -> Any:
            for n in names:
                if n in hv and hv[n] is not None:
                    try:
                        return t.template(hv[n])
                    except AnsibleError as exc:
                        raise ConfigError(f"inventory: {host.name}: cannot render {n}: {exc}") from None
            return default

        connection = str(var("ansible_connection", default="ssh"))
        if connection not in SSH_CONNECTIONS:
            log.debug("preflight: skipping %s (connection %s)", host.name, connection)
            continue
        ssh_args = " ".join(
            str(a) for a in (var("ansible_ssh_common_args", default=""), var("ansible_ssh_extra_args", default="")) if a
        )
        options = parse_ssh_options(ssh_args)
        known_hosts = options.get("userknownhostsfile")
        policy = _policy(options.get("stricthostkeychecking"), var("ansible_host_key_checking",
                                                                 "ansible_ssh_host_key_checking"))
        if known_hosts in ("/dev/null", "none"):
            known_hosts, policy = None, HostKeyPolicy.OFF
        key = var("ansible_ssh_private_key_file", "ansible_private_key_file")
        port = var("ansible_port", "ansible_ssh_port", default=options.get("port", 22))
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ConfigError(f"inventory: {host.name}: ansible_port {port!r} is not a number") from None
        override = var("ansible_ssh_args")
        executable = var("ansible_ssh_executable")
        specs.append(
            HostSpec(
                name=host.name,
                address=str(var("ansible_host", "ansible_ssh_host", default=host.name)),
                port=port,
                user=str(var("ansible_user", "ansible_ssh_user", default=options.get("user")) or "") or None,
                key_file=Path(str(key)).expanduser() if key else None,
                known_hosts=Path(known_hosts.split()[0]).expanduser() if known_hosts else None,
                host_key_policy=policy,
                connection=connection,
                ssh_args=ssh_args,
                ssh_args_override=str(override) if override is not None else None,
                # Present is enough (never rendered here: it may be a lookup of a secret).
                password=any(hostvars.get(n) is not None for n in ("ansible_password", "ansible_ssh_pass",
                                                                    "ansible_ssh_password")),
                ssh_executable=str(executable) if executable is not None else None,
            )
        )
    return specs


def parse_ssh_options(args: str) -> dict[str, str]:
    """``-o Key=Value`` / ``-oKey=Value`` / ``-o Key Value`` options, keys
    lower-cased; the first occurrence wins, as in ssh."""
    options: dict[str, str] = {}
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise ConfigError(f"inventory: cannot parse ssh args {args!r}: {exc}") from None
    i = 0
    while i < len(words):
        word = words[i]
        opt = None
        if word == "-o" and i + 1 < len(words):
            opt, i = words[i + 1], i + 2
        elif word.startswith("-o"):
            opt, i = word[2:], i + 1
        else:
            i += 1
        if opt is None:
            continue
        if "=" in opt:
            key, value = opt.split("=", 1)
        else:
            key, _, value = opt.partition(" ")
        options.setdefault(key.strip().lower(), value.strip())
    return options


def _policy(strict: str | None, ansible_checking: Any) -> HostKeyPolicy:
    if strict is not None:
        value = strict.lower()
        if value in ("no", "off", "false"):
            return HostKeyPolicy.OFF
        if value == "accept-new":
            return HostKeyPolicy.ACCEPT_NEW
        return HostKeyPolicy.STRICT
    if ansible_checking is not None and str(ansible_checking).lower() in ("false", "no", "0", "off"):
        return HostKeyPolicy.OFF
    if os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "").lower() in ("false", "no", "0", "off"):
        return HostKeyPolicy.OFF
    return HostKeyPolicy.STRICT
