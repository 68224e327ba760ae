"""The project a command works on, and its configuration.

Precedence, lowest first: built-in defaults < ``[tool.technician-ops]`` in
pyproject.toml (or technician-ops.toml) < environment < CLI flags.  Runbook
front matter then applies per run.  ``Project.sources`` says where each
value came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ConfigError

ENV = {
    "inventory": "TECHNICIAN_OPS_INVENTORY",
    "audit_url": "TECHNICIAN_OPS_AUDIT_URL",
    "state_dir": "TECHNICIAN_OPS_STATE_DIR",
    "controller_name": "TECHNICIAN_OPS_CONTROLLER",
}
KEYS = {"inventory", "audit_url", "state_dir", "forks", "keep_backups", "controller_name", "execution_nodes"}
# A controller's name is shown by ``history`` and kept in every record: a short label, never markup or escapes.
CONTROLLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")


@dataclass(frozen=True)
class Project:
    root: Path
    inventory: tuple[Path, ...]
    state_dir: Path
    audit_url: str | None = None
    forks: int | None = None
    keep_backups: int = 10
    controller_name: str | None = None  # who ran a run, in a team's shared store (default: the host name)
    execution_nodes: dict[str, ExecutionNode] = field(default_factory=dict)  # by name (docs/nodes.md)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def runbooks_dir(self) -> Path:
        return self.root / "runbooks"


def find_root(start: Path | None = None) -> Path:
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "runbooks").is_dir() or (d / "technician-ops.toml").is_file():
            return d
    return start


def _file_config(root: Path) -> tuple[dict[str, Any], str]:
    own = root / "technician-ops.toml"
    pyproject = root / "pyproject.toml"
    if not own.is_file() and not pyproject.is_file():
        return {}, ""
    import tomllib  # ~3 ms: only when there is a file to read

    if own.is_file():
        try:
            return tomllib.loads(own.read_text()), str(own)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{own}: {exc}") from None
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject}: {exc}") from None
        return data.get("tool", {}).get("technician-ops", {}), f"{pyproject} [tool.technician-ops]"
    return {}, ""


def load_project(root: Path | None = None, *, inventory: tuple[str, ...] = (), audit_url: str | None = None,
                 environ: dict[str, str] | None = None) -> Project:
    env = os.environ if environ is None else environ
    if root is None and env.get("TECHNICIAN_OPS_PROJECT"):
        root = Path(env["TECHNICIAN_OPS_PROJECT"])
    root = (root or find_root()).resolve()
    values: dict[str, Any] = {"inventory": None, "audit_url": None, "state_dir": ".technician-ops", "forks": None, "keep_backups": 10,
                              "controller_name": None, "execution_nodes": {}}
    sources = {k: "default" for k in values}
    config, where = _file_config(root)
    for key, value in config.items():
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(KEYS))})")
        values[key], sources[key] = value, where
    for key, var in ENV.items():
        if env.get(var):
            values[key], sources[key] = env[var], f"${var}"
    if inventory:
        values["inventory"], sources["inventory"] = list(inventory), "--inventory"
    if audit_url:
        values["audit_url"], sources["audit_url"] = audit_url, "--audit-url"
    inv = values["inventory"]
    if inv is None:
        default = root / "inventory"
        inv_paths: tuple[Path, ...] = (default,) if default.exists() else ()
    else:
        items = inv if isinstance(inv, list) else str(inv).split(os.pathsep)
        inv_paths = tuple((Path(p) if Path(p).is_absolute() else (Path.cwd() / p if sources["inventory"] == "--inventory" else root / p)).resolve() for p in items)
    state = Path(values["state_dir"])
    state = state if state.is_absolute() else root / state
    return Project(root, inv_paths, state, values["audit_url"] or None,
                   int(values["forks"]) if values["forks"] else None, int(values["keep_backups"]),
                   _controller_name(values["controller_name"], sources["controller_name"]),
                   execution_nodes(values["execution_nodes"], sources["execution_nodes"]), sources)


def _controller_name(value: Any, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not CONTROLLER_NAME.fullmatch(value):
        raise ConfigError(f"{source}: controller_name {str(value)[:80]!r} is not a valid name",
                          hint="1-64 characters: letters, digits and . _ @ : - (starting with a letter or digit)")
    return value


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


# An execution node's name: in paths, environment values, artifact directory names and records.
NODE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_NODE_KEYS = {"host", "address", "port", "user", "key_file", "ssh_args", "python", "work_dir", "groups", "hosts"}


@dataclass(frozen=True)
class ExecutionNode:
    """A host that runs its share of a run's hosts with ansible-runner's worker (docs/nodes.md)."""

    name: str
    host: str | None = None  # an inventory host whose connection variables reach the node
    address: str | None = None  # ... or the node's address, port, user, key and ssh options here
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    ssh_args: str = ""
    python: tuple[str, ...] = ("python3",)  # the node's interpreter with technician-ops installed, as argv
    work_dir: str = "/tmp"  # where the node keeps a run's private directory (removed at its end)
    groups: tuple[str, ...] = ()  # inventory groups whose hosts this node runs (a host's own
    hosts: tuple[str, ...] = ()  # technician_ops_execution_node variable wins)


def execution_nodes(table: Any, source: str) -> dict[str, ExecutionNode]:
    """``[tool.technician-ops.execution_nodes.NAME]`` tables, checked; a bad one names its source and key."""
    import shlex

    if not table:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: execution_nodes must be a table of nodes ([...execution_nodes.NAME])")
    nodes = {}
    for name, spec in table.items():
        where = f"{source}: execution_nodes.{name}"
        if not isinstance(name, str) or not NODE_NAME.fullmatch(name) or name == "local":
            raise ConfigError(f"{where}: a node's name is 1-63 lowercase letters, digits and . _ - (not 'local')")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = sorted(set(spec) - _NODE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(_NODE_KEYS))})")
        if bool(spec.get("host")) == bool(spec.get("address")):
            raise ConfigError(f"{where}: give either host (an inventory host) or address, not both or neither")
        text = {k: spec[k] for k in ("host", "address", "user", "key_file", "ssh_args", "work_dir") if k in spec}
        for key, value in text.items():
            if not isinstance(value, str) or not value.isprintable() or len(value) > 1024:
                raise ConfigError(f"{where}: {key} must be a printable string")
        python = spec.get("python", "python3")
        try:
            argv = tuple(shlex.split(python)) if isinstance(python, str) else ()
        except ValueError as exc:
            raise ConfigError(f"{where}: python {python!r}: {exc}") from None
        if not argv or not all(a.isprintable() for a in argv):
            raise ConfigError(f"{where}: python must name the node's interpreter (a command line)")
        port = spec.get("port", 22)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}: port must be a number from 1 to 65535")
        work_dir = text.get("work_dir", "/tmp")
        if not work_dir.startswith("/"):
            raise ConfigError(f"{where}: work_dir must be an absolute path on the node")
        lists = {}
        for key in ("groups", "hosts"):
            value = spec.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: {key} must be a list of names")
            lists[key] = tuple(value)
        nodes[name] = ExecutionNode(name, text.get("host"), text.get("address"), port, text.get("user"),
                                    text.get("key_file"), text.get("ssh_args", ""), argv, work_dir,
                                    lists["groups"], lists["hosts"])
    return nodes
