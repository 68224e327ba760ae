"""Reading the user's Ansible inventory with Ansible's own parser.

Used at run time only (never by ``--help`` or ``lint``): to resolve a step's
host pattern, to check ``host`` parameters, and to find local-connection
hosts that need the controller's interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Connection plugins that reach the host over SSH (and so can be preflighted).
SSH_CONNECTIONS = frozenset({"ssh", "paramiko", "paramiko_ssh", "smart", "ansible.builtin.ssh",
                             "ansible.builtin.paramiko_ssh", "ansible.legacy.ssh"})


@dataclass
class Inventory:
    paths: tuple[Path, ...]
    _manager: Any
    _variables: Any
    _loader: Any = None

    def hosts(self, pattern: str) -> list[str]:
        return [str(h.name) for h in self._manager.get_hosts(pattern=pattern)]

    def all_hosts(self) -> list[str]:
        return [str(h.name) for h in self._manager.get_hosts(pattern="all")]

    def host_vars(self, name: str) -> dict[str, Any]:
        host = self._manager.get_host(name)
        if host is None:
            return {}
        return dict(self._variables.get_vars(host=host, include_hostvars=False))

    def may_use_ssh(self, name: str) -> bool:
        """False only when the host's connection is plainly not SSH (``local``, ``docker``...).

        Lets ``run`` skip preflight, and importing paramiko (~0.1 s), when no
        target could need it.  A templated connection counts as SSH: preflight
        renders it and decides.
        """
        connection = self.host_vars(name).get("ansible_connection")
        if connection is None or "{" in str(connection):
            return True
        return str(connection) in SSH_CONNECTIONS

    def preflight_specs(self, pattern: str) -> list[Any]:
        """``preflight.HostSpec`` of the SSH hosts matching ``pattern``, from this already-loaded inventory."""
        from . import preflight

        loader = self._loader if self._loader is not None else self._variables._loader
        return preflight.hosts_from_manager(self._manager, self._variables, loader, pattern,
                                            what=", ".join(map(str, self.paths)))

    def local_hosts_without_python(self) -> list[str]:
        out = []
        for name in self.all_hosts():
            hv = self.host_vars(name)
            if hv.get("ansible_connection") == "local" and "ansible_python_interpreter" not in hv:
                out.append(name)
        return out


def load(paths: tuple[Path, ...]) -> Inventory:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"inventory not found: {', '.join(missing)}", hint="pass --inventory PATH")
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(p) for p in paths])
    return Inventory(paths, manager, VariableManager(loader=loader, inventory=manager), loader)
