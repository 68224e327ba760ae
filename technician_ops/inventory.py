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


@dataclass
class Inventory:
    paths: tuple[Path, ...]
    _manager: Any
    _variables: Any

    def hosts(self, pattern: str) -> list[str]:
        return [str(h.name) for h in self._manager.get_hosts(pattern=pattern)]

    def all_hosts(self) -> list[str]:
        return [str(h.name) for h in self._manager.get_hosts(pattern="all")]

    def host_vars(self, name: str) -> dict[str, Any]:
        host = self._manager.get_host(name)
        if host is None:
            return {}
        return dict(self._variables.get_vars(host=host, include_hostvars=False))

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
    return Inventory(paths, manager, VariableManager(loader=loader, inventory=manager))
