"""A local SSH test bed: N OpenSSH hosts, each in its own network and mount namespace.

Why namespaces rather than containers: the machine that runs the tests (a
developer's, CI's) has root but no container runtime, and every test target
must be an address of this machine.  Each host is a real ``/usr/sbin/sshd``
that runs inside

* a network namespace ``{prefix}-{name}`` with one veth (``eth0``) whose peer
  ``{prefix}-{name}`` sits on the bridge ``{prefix}-br`` in the root
  namespace.  The namespaces get no default route and there is no NAT, so no
  packet of the test bed can leave the subnet (``10.203.0.0/24`` by default);
* a private mount namespace in which a per-host directory is bind-mounted
  over each *private path* (``/root``, ``/srv``, ``/tmp``, ``/var/tmp`` by
  default).  A file a step writes to ``/srv`` or ``~`` on host 2 is therefore
  not host 1's.  Every other path (``/usr``, ``/etc``, ...) is the machine's
  own and shared, which is what lets Ansible use ``/usr/bin/python3`` there.

Logins are ``root`` with a key pair the test bed generates; host keys are
generated too and written to a ``known_hosts`` file the inventory names with
``StrictHostKeyChecking=yes``, so the default path never trusts blindly.

The state directory (default ``.testbed/`` in the repository) holds
``testbed.json`` (what exists, written *before* it is created so that
``down`` can remove a half-built bed), ``inventory.ini``, ``known_hosts``,
``id_ed25519`` and ``hosts/<name>/`` (sshd files and the private trees).

Inside a host the state directory is reachable as
``/run/tops-testbed/<netns>``: sshd reads its configuration from there so
that a state directory below a private path (``/tmp/...``) stays visible.

Faults the tests can inject: stop/start a host's sshd, take its link down
and up (traffic is silently dropped: connections time out), and make it slow
(a relay inside the namespace delays every byte; the kernel here has no
``netem``).

This module uses only the standard library so that ``testbed/up`` runs with
any ``python3``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
RUN_ROOT = Path("/run/tops-testbed")
REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_HOSTS = 3
DEFAULT_SUBNET = "10.203.0.0/24"
DEFAULT_PREFIX = "tops"
DEFAULT_PRIVATE_PATHS = ("/root", "/srv", "/tmp", "/var/tmp")
STATE_FILE = "testbed.json"
# First host address inside the subnet: .1 is the bridge, .2-.10 stay free.
FIRST_HOST_OFFSET = 11
READY_TIMEOUT = 10.0

# Files and folders in the state dir that the test bed created and may delete.
_OWNED_FILES = (
    STATE_FILE,
    "inventory.ini",
    "known_hosts",
    "id_ed25519",
    "id_ed25519.pub",
    "authorized_keys",
)


class TestbedError(RuntimeError):
    """The test bed could not be built or changed; the message says what to do."""

    __test__ = False  # not a pytest test class


@dataclass
class Host:
    """One test host.  ``slow_ms`` and ``sshd_stopped`` record injected faults."""

    name: str
    groups: list[str]
    address: str
    netns: str
    veth: str
    slow_ms: int | None = None
    sshd_stopped: bool = False
    link_down: bool = False


@dataclass
class _State:
    prefix: str
    subnet: str
    bridge: str
    private_paths: list[str]
    hosts: list[Host] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> _State:
        raw = json.loads(text)
        hosts = [Host(**h) for h in raw.pop("hosts")]
        return cls(**raw, hosts=hosts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def layout(n: int) -> list[tuple[str, list[str]]]:
    """Name hosts by role: two ``db`` hosts when there are three or more (so a
    primary/standby runbook has both), the rest ``web``."""
    if n < 1:
        raise TestbedError(f"--hosts must be at least 1, not {n}")
    db = 2 if n >= 3 else (1 if n == 2 else 0)
    web = n - db
    return [(f"web{i}", ["web"]) for i in range(1, web + 1)] + [
        (f"db{i}", ["db"]) for i in range(1, db + 1)
    ]


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise TestbedError(f"`{shlex.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _kill(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _tcp_state(address: str, port: int, timeout: float = 0.5) -> str:
    """'open', 'refused' or 'silent' for one connect attempt from the root namespace."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def ensure_packages() -> None:
    """Install what the test bed needs when it is missing (Debian packages)."""
    missing = []
    if not Path(SSHD).exists():
        missing.append("openssh-server")
    if not Path(SSH).exists() or shutil.which("ssh-keygen") is None:
        missing.append("openssh-client")
    if shutil.which("ip") is None:
        missing.append("iproute2")
    if shutil.which("unshare") is None:
        missing.append("util-linux")
    if not missing:
        return
    if os.geteuid() != 0:
        raise TestbedError(f"missing {' '.join(missing)}: run `apt-get install -y {' '.join(missing)}` as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise TestbedError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-2000:]}")


class Testbed:
    """Build, inspect, break and remove the SSH test bed.

    The constructor only describes a bed; ``up()`` builds it and ``down()``
    removes everything ``testbed.json`` in ``state_dir`` says exists, which is
    also what a later process (``testbed/fault``, ``testbed/down``) reads.
    """

    __test__ = False

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        hosts: int = DEFAULT_HOSTS,
        subnet: str | None = None,
        prefix: str | None = None,
        private_paths: Sequence[str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir or os.environ.get("TOPS_TESTBED_DIR") or REPO_ROOT / ".testbed").absolute()
        prefix = prefix or os.environ.get("TOPS_TESTBED_PREFIX") or DEFAULT_PREFIX
        subnet = subnet or os.environ.get("TOPS_TESTBED_SUBNET") or DEFAULT_SUBNET
        if private_paths is None:
            env_paths = os.environ.get("TOPS_TESTBED_PRIVATE_PATHS")
            private_paths = env_paths.split(":") if env_paths else DEFAULT_PRIVATE_PATHS
        self._check_config(prefix, subnet, private_paths, hosts)
        self._config = (prefix, subnet, list(private_paths), hosts)
        # What exists (from an earlier up) wins over what was asked for, so
        # that down() and the faults act on the real bed; up() re-plans.
        self.state = self._load() or self._plan(*self._config)

    # ------------------------------------------------------------------ paths

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / "inventory.ini"

    @property
    def known_hosts_path(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def hosts(self) -> list[Host]:
        return list(self.state.hosts)

    def host_dir(self, host: Host | str) -> Path:
        return self.state_dir / "hosts" / self.host(host).name

    def private_dir(self, host: Host | str, path: str) -> Path:
        """Where ``path`` (one of the private paths) of ``host`` lives on this machine."""
        if path not in self.state.private_paths:
            raise TestbedError(f"{path} is shared by all hosts, not private to one")
        return self.host_dir(host) / "fs" / path.strip("/")

    def _run_dir(self, host: Host) -> Path:
        """The state dir as seen from inside ``host``'s mount namespace."""
        return RUN_ROOT / host.netns

    def host(self, name: Host | str) -> Host:
        """A host by inventory name or address."""
        if isinstance(name, Host):
            name = name.name
        for h in self.state.hosts:
            if name in (h.name, h.address):
                return h
        known = ", ".join(h.name for h in self.state.hosts)
        raise TestbedError(f"no test host {name!r} (hosts: {known})")

    # ------------------------------------------------------------- build plan

    @staticmethod
    def _check_config(prefix: str, subnet: str, private_paths: Sequence[str], hosts: int) -> None:
        if not prefix.isalnum() or len(prefix) > 6:
            raise TestbedError(f"prefix {prefix!r} must be 1-6 letters/digits (interface names are short)")
        try:
            net = ipaddress.ip_network(subnet)
        except ValueError as exc:
            raise TestbedError(f"bad subnet {subnet!r}: {exc}") from None
        if net.version != 4 or net.num_addresses < FIRST_HOST_OFFSET + hosts + 1:
            raise TestbedError(f"subnet {subnet} is too small for {hosts} hosts (or not IPv4)")
        for p in private_paths:
            if not p.startswith("/") or p in ("/", "/run", "/usr", "/etc", "/proc", "/sys", "/dev"):
                raise TestbedError(f"{p!r} cannot be a private path")

    def _plan(self, prefix: str, subnet: str, private_paths: list[str], n: int) -> _State:
        net = ipaddress.ip_network(subnet)
        hosts = [
            Host(
                name=name,
                groups=groups,
                address=str(net.network_address + FIRST_HOST_OFFSET + i),
                netns=f"{prefix}-{name}",
                veth=f"{prefix}-{name}",
            )
            for i, (name, groups) in enumerate(layout(n))
        ]
        return _State(prefix=prefix, subnet=subnet, bridge=f"{prefix}-br", private_paths=private_paths, hosts=hosts)

    def _load(self) -> _State | None:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            return _State.from_json(path.read_text())
        except (ValueError, TypeError, KeyError) as exc:
            raise TestbedError(f"{path} is unreadable ({exc}); remove the namespaces by hand and delete it") from None

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(self.state.to_json())
        tmp.replace(self.state_dir / STATE_FILE)

    # ------------------------------------------------------------------- up

    def up(self) -> None:
        """Build the bed from scratch (an existing one in the same dir is removed
        first).  A failure part-way removes what was built and re-raises."""
        if os.geteuid() != 0:
            raise TestbedError("the test bed needs root (network namespaces, bind mounts)")
        if any(c.isspace() or c in "'\"\\" for c in str(self.state_dir)):
            raise TestbedError(f"state dir {self.state_dir} must not contain spaces or quotes (it goes into ssh args)")
        ensure_packages()
        self.down()
        self.state = self._plan(*self._config)
        self._refuse_collisions()
        self._save()  # before creating anything: down() must find half-built state
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _refuse_collisions(self) -> None:
        """Never take over a subnet or names that something else on the machine uses."""
        net = ipaddress.ip_network(self.state.subnet)
        for line in _run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
            parts = line.split()
            if "inet" in parts:
                iface = ipaddress.ip_interface(parts[parts.index("inet") + 1])
                if iface.network.overlaps(net):
                    raise TestbedError(
                        f"{parts[1]} already has {iface} in {net}: choose another TOPS_TESTBED_SUBNET"
                    )
        namespaces = set(_run(["ip", "netns", "list"]).stdout.split())
        links = self._links()
        for h in self.state.hosts:
            if h.netns in namespaces or h.veth in links:
                raise TestbedError(
                    f"{h.netns} already exists (another test bed with prefix {self.state.prefix!r}?): "
                    f"run `testbed/down --sweep` or set TOPS_TESTBED_PREFIX"
                )
        if self.state.bridge in links:
            raise TestbedError(f"bridge {self.state.bridge} already exists: run `testbed/down --sweep`")

    def _build(self) -> None:
        sd = self.state_dir
        net = ipaddress.ip_network(self.state.subnet)
        sd.chmod(0o755)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "technician-ops-testbed", "-f", str(self.key_path)])
        shutil.copyfile(self.key_path.with_suffix(".pub"), sd / "authorized_keys")
        (sd / "authorized_keys").chmod(0o600)

        br = self.state.bridge
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{net.network_address + 1}/{net.prefixlen}", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir

        known_hosts = []
        for h in self.state.hosts:
            self._build_host(h, net)
            pub = (self.host_dir(h) / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
            known_hosts.append(f"{h.address} {pub[0]} {pub[1]}\n")
        self.known_hosts_path.write_text("".join(known_hosts))
        self.inventory_path.write_text(self.render_inventory())
        for h in self.state.hosts:
            self.start_sshd(h)

    def _build_host(self, h: Host, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        _run(["ip", "netns", "add", h.netns])
        _run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
        _run(["ip", "link", "set", h.veth, "master", self.state.bridge, "up"])
        _run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{net.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
        # A permanent neighbour entry makes a cut link behave like a cut cable
        # behind a switch: packets vanish and connects time out, instead of the
        # kernel answering "no route to host" after ARP gives up.
        mac = json.loads(_run(["ip", "-j", "-n", h.netns, "link", "show", "eth0"]).stdout)[0]["address"]
        _run(["ip", "neigh", "replace", h.address, "lladdr", mac, "dev", self.state.bridge, "nud", "permanent"])

        hd = self.host_dir(h)
        ssh_dir = hd / "ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        for p in self.state.private_paths:
            d = self.private_dir(h, p)
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o1777 if p.endswith("tmp") else 0o700 if p == "/root" else 0o755)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(ssh_dir / "ssh_host_ed25519_key")])
        run = self._run_dir(h)
        (ssh_dir / "sshd_config").write_text(
            "\n".join(
                [
                    f"# {h.name}: generated by testbed/up",
                    "Port 22",
                    f"HostKey {run}/hosts/{h.name}/ssh/ssh_host_ed25519_key",
                    f"PidFile {run}/hosts/{h.name}/ssh/sshd.pid",
                    f"AuthorizedKeysFile {run}/authorized_keys",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "UseDNS no",
                    "PrintMotd no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    "AcceptEnv LANG LC_*",
                    "",
                ]
            )
        )

    def render_inventory(self) -> str:
        """The Ansible inventory: strict host key checking against our known_hosts."""
        common = f"-o UserKnownHostsFile={self.known_hosts_path} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        lines = ["# Generated by testbed/up: local SSH test hosts in network namespaces.", ""]
        groups: dict[str, list[Host]] = {}
        for h in self.state.hosts:
            for g in h.groups:
                groups.setdefault(g, []).append(h)
        for group in ("web", "db"):
            lines.append(f"[{group}]")
            for h in groups.get(group, []):
                lines.append(
                    f"{h.name} ansible_host={h.address} ansible_port=22 ansible_user=root"
                    f" ansible_ssh_private_key_file={self.key_path}"
                    f" ansible_ssh_common_args='{common}'"
                    " ansible_python_interpreter=/usr/bin/python3"
                )
            lines.append("")
        return "\n".join(lines)

    # -------------------------------------------------------------- faults

    def _sshd_pid(self, h: Host) -> int | None:
        try:
            pid = int((self.host_dir(h) / "ssh" / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _relay_pid(self, h: Host) -> int | None:
        try:
            pid = int((self.host_dir(h) / "relay.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _spawn_sshd(self, h: Host, listen: str) -> None:
        hd = self.host_dir(h)
        pidfile = hd / "ssh" / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        run = self._run_dir(h)
        run.mkdir(parents=True, exist_ok=True)
        # Mount sources go through `run`, which no private path hides.
        script = [f"mount --bind {shlex.quote(str(self.state_dir))} {shlex.quote(str(run))}"]
        for p in self.state.private_paths:
            src = run / "hosts" / h.name / "fs" / p.strip("/")
            script.append(f"mkdir -p {shlex.quote(p)} && mount --bind {shlex.quote(str(src))} {shlex.quote(p)}")
        script.append(
            f"exec {SSHD} -f {run}/hosts/{h.name}/ssh/sshd_config -E {run}/hosts/{h.name}/ssh/sshd.log"
            f" -o ListenAddress={listen}"
        )
        proc = _run(
            ["ip", "netns", "exec", h.netns, "unshare", "--mount", "--propagation", "private", "--",
             "/bin/sh", "-ec", " && ".join(script)],
            check=False,
        )
        if proc.returncode != 0:
            log = (hd / "ssh" / "sshd.log").read_text()[-1500:] if (hd / "ssh" / "sshd.log").exists() else ""
            raise TestbedError(f"sshd for {h.name} did not start: {proc.stderr.strip()} {log}".strip())
        _wait_for(lambda: self._sshd_pid(h) is not None, f"sshd of {h.name} to write its pid file")

    def start_sshd(self, host: Host | str) -> None:
        """Start the host's sshd (a no-op when it runs); it answers on port 22 again."""
        h = self.host(host)
        if self._sshd_pid(h) is None:
            self._spawn_sshd(h, "127.0.0.1" if h.slow_ms else h.address)
        h.sshd_stopped = False
        self._save()
        if not h.link_down:
            _wait_for(lambda: _tcp_state(h.address, 22) == "open", f"{h.name}:22 to accept connections")

    def stop_sshd(self, host: Host | str) -> None:
        """Stop the listening sshd, as `systemctl stop ssh` would: new connections
        are refused, established sessions live on."""
        h = self.host(host)
        relay = self._relay_pid(h)
        if relay is not None:  # a slow host: the relay must go too, or it would accept
            _kill([relay])
        pid = self._sshd_pid(h)
        if pid is not None:
            _kill([pid])
        h.sshd_stopped = True
        self._save()

    def link_down(self, host: Host | str) -> None:
        """Cut the host off: its packets are dropped, connects time out."""
        h = self.host(host)
        _run(["ip", "link", "set", h.veth, "down"])
        h.link_down = True
        self._save()

    def link_up(self, host: Host | str) -> None:
        h = self.host(host)
        _run(["ip", "link", "set", h.veth, "up"])
        h.link_down = False
        self._save()
        # The bridge port forwards a moment after the link comes up; return
        # only once the host answers (a refusal is an answer too).
        _wait_for(lambda: _tcp_state(h.address, 22, timeout=0.2) != "silent", f"{h.name} to answer again")

    def slow(self, host: Host | str, ms: int) -> None:
        """Delay every byte to and from the host's sshd by ``ms`` ms in each
        direction (a round trip gains 2*ms), through a relay in its namespace."""
        if ms <= 0:
            raise TestbedError("slow needs a delay in milliseconds > 0")
        h = self.host(host)
        self.fast(h)
        sshd = self._sshd_pid(h)
        if sshd is not None:
            _kill([sshd])
        h.slow_ms = ms
        self._save()
        self._spawn_sshd(h, "127.0.0.1")
        log = open(self.host_dir(h) / "relay.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            relay = subprocess.Popen(
                ["ip", "netns", "exec", h.netns, sys.executable, str(Path(__file__).with_name("relay.py")),
                 "--listen", f"{h.address}:22", "--target", "127.0.0.1:22", "--delay-ms", str(ms)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        (self.host_dir(h) / "relay.pid").write_text(f"{relay.pid}\n")
        if not h.link_down:
            _wait_for(lambda: _tcp_state(h.address, 22) == "open", f"the slow relay of {h.name}")

    def fast(self, host: Host | str) -> None:
        """Undo ``slow``: sshd listens on the host address directly again."""
        h = self.host(host)
        if h.slow_ms is None and self._relay_pid(h) is None:
            return
        relay = self._relay_pid(h)
        if relay is not None:
            _kill([relay])
        (self.host_dir(h) / "relay.pid").unlink(missing_ok=True)
        h.slow_ms = None
        self._save()
        if not h.sshd_stopped:
            sshd = self._sshd_pid(h)
            if sshd is not None:
                _kill([sshd])
            self.start_sshd(h)

    def heal(self) -> None:
        """Undo every injected fault: what a test calls when it is done breaking things."""
        for h in self.state.hosts:
            if h.link_down:
                self.link_up(h)
            self.fast(h)
            self.start_sshd(h)

    # ------------------------------------------------------------- helpers

    def ssh(self, host: Host | str, command: str, *, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` with the system ssh client and the
        inventory's settings (strict host key checking)."""
        h = self.host(host)
        return subprocess.run(
            [SSH, "-i", str(self.key_path), "-o", f"UserKnownHostsFile={self.known_hosts_path}",
             "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", "ConnectTimeout=5", "-F", "/dev/null", f"root@{h.address}", command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def is_up(self) -> bool:
        namespaces = set(_run(["ip", "netns", "list"], check=False).stdout.split())
        return bool(self.state.hosts) and all(h.netns in namespaces for h in self.state.hosts)

    @staticmethod
    def _links() -> set[str]:
        out = _run(["ip", "-o", "link", "show"], check=False).stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}

    # ----------------------------------------------------------------- down

    def down(self, *, sweep: bool = False) -> None:
        """Remove everything the state says exists; with ``sweep`` also every
        namespace and link named ``{prefix}-*``.  Never raises for what is
        already gone, so it is safe after any failure."""
        namespaces = set(_run(["ip", "netns", "list"], check=False).stdout.split())
        names = {h.netns for h in self.state.hosts}
        if sweep:
            names |= {n for n in namespaces if n.startswith(f"{self.state.prefix}-")}
        for h in self.state.hosts:
            pid = self._relay_pid(h)
            if pid is not None:
                _kill([pid])
        for ns in sorted(names & namespaces):
            pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split()]
            _kill(pids)
            _run(["ip", "netns", "del", ns], check=False)
        links = self._links()
        doomed = {h.veth for h in self.state.hosts} | {self.state.bridge}
        if sweep:
            doomed |= {link for link in links if link.startswith(f"{self.state.prefix}-")}
        for link in sorted(doomed & links):
            _run(["ip", "link", "del", link], check=False)
        for ns in names:
            with contextlib.suppress(OSError):
                (RUN_ROOT / ns).rmdir()
        with contextlib.suppress(OSError):
            RUN_ROOT.rmdir()
        self._remove_files()
        for h in self.state.hosts:
            h.slow_ms, h.sshd_stopped, h.link_down = None, False, False

    def _remove_files(self) -> None:
        sd = self.state_dir
        if not sd.is_dir():
            return
        shutil.rmtree(sd / "hosts", ignore_errors=True)
        for name in _OWNED_FILES:
            (sd / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sd.rmdir()  # only when nothing else is in it


# --------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    try:
        yield
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def main_up(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="testbed/up", description="Start N local SSH test hosts.")
    parser.add_argument("--hosts", type=int, default=int(os.environ.get("TOPS_TESTBED_HOSTS", DEFAULT_HOSTS)))
    parser.add_argument("--dir", type=Path, default=None, help="state dir (default: .testbed/ in the repo)")
    args = parser.parse_args(argv)
    with _cli_errors():
        bed = Testbed(args.dir, hosts=args.hosts)
        bed.up()
        for h in bed.hosts:
            print(f"{h.name:6} {h.address:15} groups={','.join(h.groups)}")
        print(f"inventory: {bed.inventory_path}")


def main_down(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="testbed/down", description="Remove the SSH test bed.")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--sweep", action="store_true", help="also remove any namespace/link named PREFIX-*")
    args = parser.parse_args(argv)
    with _cli_errors():
        Testbed(args.dir).down(sweep=args.sweep)


def main_fault(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="testbed/fault", description="Break or repair one test host.")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("host", help="inventory name (web1) or address")
    parser.add_argument("action", choices=["stop-sshd", "start-sshd", "link-down", "link-up", "slow", "fast", "heal"])
    parser.add_argument("ms", nargs="?", type=int, help="delay for `slow`, in milliseconds")
    args = parser.parse_args(argv)
    with _cli_errors():
        bed = Testbed(args.dir)
        if not bed.is_up():
            raise TestbedError("the test bed is not up: run testbed/up")
        if args.action == "slow" and args.ms is None:
            raise TestbedError("slow needs MS, e.g. `testbed/fault web1 slow 500`")
        actions = {
            "stop-sshd": bed.stop_sshd,
            "start-sshd": bed.start_sshd,
            "link-down": bed.link_down,
            "link-up": bed.link_up,
            "fast": bed.fast,
            "slow": lambda h: bed.slow(h, args.ms),
            "heal": lambda h: bed.heal(),
        }
        actions[args.action](args.host)
