"""Reading the user's Ansible inventory with Ansible's own parser.

Used at run time only (never by ``--help`` or ``lint``): to resolve a step's
host pattern, to check ``host`` parameters, and to find local-connection
hosts that need the controller's interpreter.

Importing Ansible's inventory code costs a run ~0.3 s of CPU before
ansible-playbook (which loads the same inventory again) even starts.  The
answers a run needs from it are few and, for a static inventory, a pure
function of files on disk: which hosts a pattern matches, and each host's
``ansible_connection`` and whether it names an interpreter.  So ``load`` can
keep them in a cache under the state directory, keyed by a fingerprint of
everything that could change them (every inventory file's bytes and mode,
the group_vars/host_vars beside it, Ansible's config files, the ``ANSIBLE_*``
environment, the ansible-core install).  A run whose inventory did not change
answers from the cache and never imports Ansible; any question the cache
cannot answer (a new pattern, preflight's rendered SSH settings) loads
Ansible then, as before.  Dynamic inventories (executable scripts, inventory
plugin configs) are never cached: their answers are not a function of the
files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ConfigError

# Connection plugins that reach the host over SSH (and so can be preflighted).
SSH_CONNECTIONS = frozenset({"ssh", "paramiko", "paramiko_ssh", "smart", "ansible.builtin.ssh",
                             "ansible.builtin.paramiko_ssh", "ansible.legacy.ssh"})

# A host's (or group's) variable that puts it behind an execution node (docs/nodes.md).
NODE_VAR = "technician_ops_execution_node"
CACHE_FORMAT = 2  # 2: a host's execution node (``node``)
CACHE_FILE = "inventory.json"
# Set to 0 to always read the inventory with Ansible (e.g. while debugging an inventory).
ENV_NO_CACHE = "TECHNICIAN_OPS_INVENTORY_CACHE"
_PLUGIN_CONFIG = re.compile(rb"^plugin\s*:", re.MULTILINE)


@dataclass
class _Loaded:
    """Ansible's own view of the inventory: loaded on the first question the cache cannot answer."""

    manager: Any
    variables: Any
    loader: Any


@dataclass
class Inventory:
    """Answers about the inventory at ``paths``; ``load`` builds one."""

    paths: tuple[Path, ...]
    _loaded: _Loaded | None = None
    _facts: dict[str, Any] = field(default_factory=lambda: {"patterns": {}, "hosts": {}})
    _cache: Path | None = None  # where the facts are kept; None: not cacheable
    _key: str = ""
    _dirty: bool = False

    # --- the questions a run asks --------------------------------------------------
    def hosts(self, pattern: str) -> list[str]:
        known = self._facts["patterns"].get(pattern)
        if known is None:
            known = [str(h.name) for h in self._ansible().manager.get_hosts(pattern=pattern)]
            self._learn("patterns", pattern, known)
        return list(known)

    def all_hosts(self) -> list[str]:
        return self.hosts("all")

    def may_use_ssh(self, name: str) -> bool:
        """False only when the host's connection is plainly not SSH (``local``, ``docker``...).

        Lets ``run`` skip preflight, and importing paramiko (~0.1 s), when no
        target could need it.  A templated connection counts as SSH: preflight
        renders it and decides.
        """
        connection = self._host(name)["connection"]
        if connection is None or "{" in connection:
            return True
        return connection in SSH_CONNECTIONS

    def execution_node(self, name: str) -> str | None:
        """The execution node ``name``'s ``technician_ops_execution_node`` variable names (None: none)."""
        return self._host(name).get("node")

    def local_hosts_without_python(self) -> list[str]:
        out = []
        for name in self.all_hosts():
            facts = self._host(name)
            if facts["connection"] == "local" and not facts["python"]:
                out.append(name)
        return out

    def host_vars(self, name: str) -> dict[str, Any]:
        """Every variable of ``name``, unrendered (always from Ansible: values are not cached)."""
        loaded = self._ansible()
        host = loaded.manager.get_host(name)
        if host is None:
            return {}
        return dict(loaded.variables.get_vars(host=host, include_hostvars=False))

    def ansible(self) -> Any:
        """Ansible's view of these sources: ``.manager``, ``.variables``, ``.loader`` (loaded on first use).

        ``preflight.specs`` reads the SSH settings from it: they are rendered
        templates, which may read the environment or files, so never cached.
        """
        return self._ansible()

    # --- cache -----------------------------------------------------------------------
    def save(self) -> None:
        """Keep what was learned for the next run with the same inventory (best effort)."""
        if self._cache is None or not self._dirty or not self._facts["patterns"].get("all"):
            return  # an inventory without hosts is more likely broken than final: ask Ansible again
        from technician_ops.fsutil import atomic_write

        body = {"format": CACHE_FORMAT, "key": self._key, **self._facts}
        try:
            self._cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self._cache, json.dumps(body, sort_keys=True).encode(), fsync=False)
        except OSError:
            return  # a cache is an optimisation: a read-only state dir must not fail the run
        self._dirty = False

    def _host(self, name: str) -> dict[str, Any]:
        facts = self._facts["hosts"].get(name)
        if facts is None:
            hv = self.host_vars(name)
            connection = hv.get("ansible_connection")
            node = hv.get(NODE_VAR)
            facts = {"connection": None if connection is None else str(connection),
                     "python": "ansible_python_interpreter" in hv, "node": None if node is None else str(node)}
            self._learn("hosts", name, facts)
        return facts

    def _learn(self, table: str, key: str, value: Any) -> None:
        self._facts[table][key] = value
        self._dirty = True

    def _ansible(self) -> _Loaded:
        if self._loaded is None:
            from ansible.errors import AnsibleError
            from ansible.inventory.manager import InventoryManager
            from ansible.parsing.dataloader import DataLoader
            from ansible.vars.manager import VariableManager

            loader = DataLoader()
            try:
                manager = InventoryManager(loader=loader, sources=[str(p) for p in self.paths])
            except AnsibleError as exc:
                raise ConfigError(f"cannot read inventory {', '.join(map(str, self.paths))}: {exc}") from None
            self._loaded = _Loaded(manager, VariableManager(loader=loader, inventory=manager), loader)
        return self._loaded


def load(paths: tuple[Path, ...], cache_dir: Path | None = None) -> Inventory:
    """The inventory at ``paths``; with ``cache_dir``, answers of earlier runs are reused while it is unchanged.

    Call ``Inventory.save()`` once the run has asked its questions.
    """
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"inventory not found: {', '.join(missing)}", hint="pass --inventory PATH")
    inventory = Inventory(tuple(paths))
    if cache_dir is None or os.environ.get(ENV_NO_CACHE, "1") == "0":
        return inventory
    key = fingerprint(inventory.paths)
    if key is None:
        return inventory  # dynamic: never cached
    inventory._cache, inventory._key = Path(cache_dir) / CACHE_FILE, key
    try:
        body = json.loads(inventory._cache.read_bytes())
    except (OSError, ValueError):
        return inventory
    if (isinstance(body, dict) and body.get("format") == CACHE_FORMAT and body.get("key") == key
            and isinstance(body.get("patterns"), dict) and isinstance(body.get("hosts"), dict)):
        inventory._facts = {"patterns": body["patterns"], "hosts": body["hosts"]}
    return inventory


# --- fingerprint ---------------------------------------------------------------------


def fingerprint(paths: tuple[Path, ...]) -> str | None:
    """A digest of everything that decides the inventory's hosts and connections; None if it is dynamic."""
    digest = hashlib.sha256(f"technician-ops inventory {CACHE_FORMAT}\n".encode())
    for path in paths:
        digest.update(f"source {Path(path).resolve()}\n".encode())
        for file in _inventory_files(Path(path)):
            try:
                st = file.stat()
                data = file.read_bytes()
            except OSError:
                return None
            if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
                return None  # Ansible runs executable files as inventory scripts
            if file.suffix in (".yml", ".yaml", ".json") and _PLUGIN_CONFIG.search(data):
                return None  # an inventory plugin's config: the hosts come from elsewhere
            digest.update(f"file {file} {len(data)}\n".encode())
            digest.update(hashlib.sha256(data).digest())
    for i, name in enumerate(_config_files()):
        try:
            digest.update(f"config {i}\n".encode() + hashlib.sha256(Path(name).read_bytes()).digest())
        except OSError:
            pass  # absent (or unreadable to Ansible as well)
    for key in sorted(k for k in os.environ if k.startswith("ANSIBLE_")):
        digest.update(f"env {key}={os.environ[key]}\n".encode())
    digest.update(f"ansible {_ansible_install()}\n".encode())
    return digest.hexdigest()


def _inventory_files(path: Path) -> Iterator[Path]:
    """The source itself (a file, or a directory's files) and the group_vars/host_vars Ansible reads beside it."""
    roots = [path] if path.is_dir() else [path, path.parent / "group_vars", path.parent / "host_vars"]
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name


def _config_files() -> list[str]:
    """Every place Ansible looks for its configuration (all of them: which one wins is Ansible's business)."""
    return [os.environ.get("ANSIBLE_CONFIG", ""), os.path.join(os.getcwd(), "ansible.cfg"),
            os.path.expanduser("~/.ansible.cfg"), "/etc/ansible/ansible.cfg"]


def _ansible_install() -> str:
    """Which ansible-core is installed, without importing it: its release file's path, size and mtime."""
    import importlib.util

    spec = importlib.util.find_spec("ansible")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    release = Path(next(iter(spec.submodule_search_locations))) / "release.py"
    try:
        st = release.stat()
    except OSError:
        return "unknown"
    return f"{release} {st.st_size} {st.st_mtime_ns}"


def sources(paths: tuple[Path, ...]) -> list[dict[str, Any]]:
    """Each inventory source with a sha256 of its content (a directory: of every file below it).

    The audit record keeps these, so ``rollback RUN_ID`` and ``recover RUN_ID`` run on the
    inventory the run used, and refuse when it changed since.
    """
    out = []
    for path in paths:
        digest = hashlib.sha256()
        if path.is_dir():
            for item in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(item.relative_to(path)).encode() + b"\0")
                digest.update(hashlib.sha256(item.read_bytes()).digest())
            kind = "dir"
        elif path.is_file():
            digest.update(path.read_bytes())
            kind = "file"
        else:
            kind = "missing"
        out.append({"path": str(path), "kind": kind, "sha256": digest.hexdigest() if kind != "missing" else None})
    return out
