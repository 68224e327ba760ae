"""Execution nodes, the controller's side: which hosts each node runs, and the run's session on each node.

A node is an SSH host with technician-ops (and so ansible-core and ansible-runner) installed
(docs/nodes.md).  A run assigns each target host to a node or to the controller itself
(``assign``): the host's ``technician_ops_execution_node`` variable, else the node's ``hosts``
or ``groups`` in ``[tool.technician-ops.execution_nodes.NAME]``.  At preflight it opens a
**session** on every node that has hosts (``NodeSession``): one OpenSSH master connection
(in the run's own control directory, with ``PR_SET_PDEATHSIG``: it dies with technician-ops)
whose remote command is ``node_agent session``.  Over it the node

1. says its versions (ansible-core, ansible-runner, technician-ops, a digest of the plugins):
   a node that differs is refused before anything changes, naming both;
2. checks its own hosts, from where it will reach them, opening its connections to them
   (a host it cannot reach refuses the run, as a controller's own host would);
3. keeps a private directory for the run, removed when the session ends, which is when the
   master connection goes: at the end of the run, or when technician-ops dies.

The run's control channel reaches the node's tasks through a Unix socket forwarded over the
same master (``forward``), with a token of the node's own: secret values pass through node memory,
never its disk.  Each execution on the node is one more session over the master
(``worker_argv``), carrying ansible-runner's streaming protocol (engine/fanout.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.engine.control import LOCAL
from technician_ops.engine.preflight import HostKeyPolicy, HostSpec
from technician_ops.errors import ConfigError, DependencyUnavailable
from technician_ops.project import NODE_NAME, ExecutionNode, Project
from technician_ops.state import printable

# What the versions must agree on (the Python patch level is reported only).
CHECKED = ("ansible-core", "ansible-runner", "technician-ops", "plugins")
SESSION_TIMEOUT = 30.0  # seconds a node may take to answer, once connected, before it is taken for broken


def versions() -> dict[str, str]:
    """What a node must run the same of as the controller; the Python version for information."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import technician_ops

    out = {"python": platform.python_version(), "technician-ops": technician_ops.__version__,
           "plugins": plugins_digest()}
    for dist in ("ansible-core", "ansible-runner"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def plugins_digest(root: Path | None = None) -> str:
    """A digest of what runs inside Ansible on a node: our plugins, the kinds' actions, the agent
    (of the technician_ops package at ``root``; default: this one)."""
    root = root or Path(__file__).resolve().parents[1]
    files = [*root.glob("ansible_plugins/*/*.py"), *root.glob("steps/**/action/*.py"), root / "node_agent.py",
             root / "engine" / "supervise.py"]
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: str(p.relative_to(root))):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def mismatch(node: str, here: dict[str, str], there: dict[str, Any]) -> ConfigError | None:
    """The refusal when ``there`` (a node's ``versions``) differs from ``here``; None when they agree."""
    differ = [k for k in CHECKED if str(there.get(k)) != here[k]]
    if not differ:
        return None
    parts = "; ".join(f"{k} {here[k]} here, {str(there.get(k))[:64]} on the node" for k in differ)
    return ConfigError(f"execution node {node}: {parts}; nothing was changed",
                       hint="install the same technician-ops, ansible-core and ansible-runner on the node")


# -- which hosts a node runs --------------------------------------------------------------


def assign(targets: list[str], inventory: Any, project: Project) -> dict[str, str]:
    """The target hosts that run on an execution node, each with its node's name (the rest run here).

    A host's ``technician_ops_execution_node`` variable (host or group) wins; then a node's ``hosts``;
    then its ``groups``.  A variable naming no configured node is a configuration error: the host
    would otherwise run from the wrong place.
    """
    nodes = project.execution_nodes
    by_group: dict[str, set[str]] = {}
    by_host: dict[str, str] = {}
    if nodes and inventory is not None:
        for name, node in nodes.items():
            for group in node.groups:
                for host in inventory.hosts(group):
                    by_group.setdefault(host, set()).add(name)
            for host in node.hosts:
                by_host[host] = name
    out: dict[str, str] = {}
    for host in targets:
        named = inventory.execution_node(host) if inventory is not None else None
        if named is not None:
            if not NODE_NAME.fullmatch(named) or named not in nodes:
                known = ", ".join(sorted(nodes)) or "none is configured"
                raise ConfigError(f"inventory: host {host}: technician_ops_execution_node {named[:80]!r} names no "
                                  f"execution node ({known})",
                                  hint="add it under [tool.technician-ops.execution_nodes] or fix the variable")
            out[host] = named
        elif host in by_host:
            out[host] = by_host[host]
        elif len(by_group.get(host, ())) > 1:
            raise ConfigError(f"execution nodes {' and '.join(sorted(by_group[host]))} both take host {host} (by "
                              "their groups)", hint="give it one: its technician_ops_execution_node variable, "
                              "or a node's hosts = [...]")
        elif host in by_group:
            out[host] = next(iter(by_group[host]))
    return out


def refuse_unsupported(plan: Any, inventory: Any, assigned: dict[str, str]) -> None:
    """Steps whose kind cannot run behind a node (a backup, a vault step, a playbook) on a node's host."""
    for ps in plan.steps:
        if ps.kind.controller:
            continue
        if plan.host_patterns(ps) is None:  # each participant runs its own hosts: they must be known first
            raise ConfigError(f"{plan.runbook.path}:{ps.step.line}: step {ps.name!r} ({ps.kind.name}): which hosts "
                              "it runs on cannot be told before it runs, so not with execution nodes")
        if ps.kind.runs_on_nodes:
            continue
        patterns = plan.host_patterns(ps) or [ps.hosts]
        hosts = sorted({h for p in patterns for h in inventory.hosts(p) if h in assigned})
        if hosts:
            raise ConfigError(f"{plan.runbook.path}:{ps.step.line}: step {ps.name!r} ({ps.kind.name}) runs on "
                              f"{', '.join(hosts[:5])}, behind execution node {assigned[hosts[0]]}: {ps.kind.name} "
                              "steps run from the controller only",
                              hint="run those hosts from the controller (no execution node), or split the runbook")


# -- host specs over the wire ------------------------------------------------------------


def spec_to_json(spec: HostSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["key_file"] = str(spec.key_file) if spec.key_file is not None else None
    data["known_hosts"] = str(spec.known_hosts) if spec.known_hosts is not None else None
    data["host_key_policy"] = spec.host_key_policy.value
    return data


def spec_from_json(data: dict[str, Any]) -> HostSpec:
    return HostSpec(str(data["name"]), str(data["address"]), int(data.get("port") or 22), data.get("user"),
                    Path(data["key_file"]) if data.get("key_file") else None,
                    Path(data["known_hosts"]) if data.get("known_hosts") else None,
                    HostKeyPolicy(data.get("host_key_policy") or "yes"), str(data.get("connection") or "ssh"),
                    str(data.get("ssh_args") or ""), data.get("ssh_args_override"), bool(data.get("password")),
                    data.get("ssh_executable"))


def node_spec(node: ExecutionNode, inventory: Any) -> HostSpec:
    """How to reach ``node``: its inventory host's connection variables, or its own settings."""
    from technician_ops.engine import preflight, ssh_masters

    if node.host is not None:
        if inventory is None:
            raise ConfigError(f"execution node {node.name}: host {node.host!r} needs an inventory")
        found = preflight.specs(inventory, node.host)
        if len(found) != 1:
            raise ConfigError(f"execution node {node.name}: host {node.host!r} is not one SSH host of the inventory")
        spec = found[0]
    else:
        assert node.address is not None
        spec = HostSpec(node.name, node.address, node.port, node.user,
                        Path(node.key_file).expanduser() if node.key_file else None, ssh_args=node.ssh_args)
    if not ssh_masters.usable(spec):
        raise ConfigError(f"execution node {node.name}: technician-ops reaches a node with OpenSSH and a key "
                          "(no password, no other ssh executable, no ControlPath of its own)")
    return spec


# -- the run's session on a node ---------------------------------------------------------


@dataclass
class NodeSession:
    """One node's part of a run on the controller: its master connection and what the node said."""

    node: ExecutionNode
    spec: HostSpec
    hosts: list[str]  # the run's hosts on this node
    proc: subprocess.Popen[bytes] | None = None
    masters: Any = None  # the run's ssh_masters.Masters: every client of this node's master uses its options
    versions: dict[str, Any] = field(default_factory=dict)
    session_dir: str = ""  # the node's private directory for this run
    requiretty: list[str] = field(default_factory=list)
    socket: str = ""  # the control channel's socket on the node, once forwarded
    env: dict[str, str] = field(default_factory=dict)  # what the node's executions get of the channel
    _buffer: bytes = b""

    @property
    def address(self) -> str:
        return self.spec.endpoint

    def command(self, *args: str) -> str:
        """The shell line that runs ``node_agent ARGS`` on the node, every word quoted."""
        return shlex.join([*self.node.python, "-m", "technician_ops.node_agent", *args])

    def start(self, masters: Any, timeout: float) -> None:
        """Open the master connection (from the main thread: ``PR_SET_PDEATHSIG`` follows the forking thread)."""
        from technician_ops.engine import ssh_masters

        self.masters = masters
        argv = masters.argv(self.spec, timeout, False, remote=self.command("session", "--work-dir", self.node.work_dir))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=ssh_masters.die_with_parent, start_new_session=True)

    def handshake(self, specs: list[HostSpec], *, become: bool, timeout: float, ssh_args: str) -> list[str]:
        """Versions, then the node's check of its hosts; the hosts' problems (empty: all fine)."""
        assert self.proc is not None and self.proc.stdin is not None
        first = self._line(time.monotonic() + timeout + 2.0 + SESSION_TIMEOUT)
        if first is None:
            raise self._failed()
        here = versions()
        said: dict[str, Any] = first["versions"] if isinstance(first.get("versions"), dict) else {}
        self.versions = {k: _plain(str(said.get(k)))[:64] for k in (*CHECKED, "python") if k in said}
        refused = mismatch(self.node.name, here, self.versions)
        if refused is not None:
            raise refused
        request = {"hosts": [spec_to_json(s) for s in specs], "become": become, "timeout": timeout,
                   "ssh_args": ssh_args}
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise self._failed() from None
        ready = self._line(time.monotonic() + timeout + 2.0 + 0.2 * len(specs) + SESSION_TIMEOUT)
        if ready is None or not isinstance(ready.get("ready"), dict):
            raise self._failed()
        info = ready["ready"]
        self.session_dir = str(info.get("session_dir") or "")
        self.requiretty = [str(h) for h in info.get("requiretty") or [] if str(h) in self.hosts]
        work_dir = self.node.work_dir.rstrip("/") or ""
        if not re.fullmatch(re.escape(work_dir) + r"/tops-node-[A-Za-z0-9_]{1,64}", self.session_dir):
            raise ConfigError(f"execution node {self.node.name}: its agent gave no private directory under "
                              f"{self.node.work_dir}; nothing was changed")
        return [_plain(f"{p} (via execution node {self.node.name})") for p in info.get("problems") or []]

    def _line(self, deadline: float) -> dict[str, Any] | None:
        """The agent's next JSON line, or None when ssh ended (or said nothing) before ``deadline``."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
                if len(self._buffer) > 1 << 20:
                    return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            data = json.loads(line)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _failed(self) -> Exception:
        """Why the session did not come up: the node unreachable (75), or technician-ops not runnable there (78)."""
        from technician_ops.engine import preflight, ssh_masters

        assert self.proc is not None
        words = ssh_masters.last_words(self.proc)
        rc = self.proc.returncode
        self.close()
        if rc == 255 or rc is None:  # ssh's own failure (or no answer): the node is not reachable
            problems = preflight.check_hosts([self.spec])
            why = str(problems[0]).split(": ", 1)[-1] if problems else words
            return DependencyUnavailable(
                f"preflight: execution node {self.node.name} ({self.address}) not reachable: {why}; nothing was changed",
                hint="fix the node (or its network) and run again")
        return ConfigError(f"execution node {self.node.name} ({self.address}): technician-ops did not start there "
                           f"({' '.join(self.node.python)} -m technician_ops.node_agent): {words}; nothing was changed",
                           hint="install technician-ops on the node, or set the node's python = ...")

    def forward(self, local_socket: Path, token: str) -> dict[str, str]:
        """Forward the run's control socket to the node's private directory; the environment that reaches it."""
        from technician_ops.channel import ENV_SOCKET, ENV_TOKEN

        self.socket = f"{self.session_dir}/control.sock"
        argv = self.masters.argv(self.spec, SESSION_TIMEOUT, False, master=False,
                                 control=["-O", "forward", "-R", f"{self.socket}:{local_socket}"])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise DependencyUnavailable(f"execution node {self.node.name}: the control channel's forward did not "
                                        "answer within 30 s") from None
        if proc.returncode != 0:
            raise DependencyUnavailable(f"execution node {self.node.name}: cannot forward the control channel: "
                                        f"{proc.stderr.strip()[-300:] or proc.returncode}")
        return {ENV_SOCKET: self.socket, ENV_TOKEN: token}

    def worker_argv(self, ident: str) -> list[str]:
        """ssh running the agent's worker for one execution, over the master (no new login): the master's own
        options, so ssh finds the master's socket (its name hashes host, port, user and jump host)."""
        return self.masters.argv(self.spec, SESSION_TIMEOUT, False, master=False,
                                 remote=self.command("worker", "--session", self.session_dir, "--ident", ident))

    def describe(self) -> dict[str, Any]:
        """What the record keeps of this node."""
        return {"address": self.address, "hosts": sorted(self.hosts), "versions": dict(self.versions)}

    def close(self) -> None:
        """End the session: the agent sees its input end, stops what is left of the run there and removes
        its directory; then the master goes."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(15.0)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def participants_of(assigned: dict[str, str], targets: list[str]) -> dict[str, list[str]]:
    """{participant: its hosts}: ``local`` (the controller) first, then each node, in name order."""
    out: dict[str, list[str]] = {LOCAL: [h for h in targets if h not in assigned]}
    for host in targets:
        if host in assigned:
            out.setdefault(assigned[host], []).append(host)
    return dict([(LOCAL, out[LOCAL])] + sorted((k, v) for k, v in out.items() if k != LOCAL))


def _plain(text: str) -> str:
    """A node's words as text for a terminal and a record: no control characters (a node is another machine)."""
    return printable(text)[:2000]
