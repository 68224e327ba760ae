"""run reuses its loaded inventory for preflight, and skips it for hosts that cannot use SSH."""

from __future__ import annotations

from pathlib import Path

from technician_ops.engine import inventory
from technician_ops.engine import preflight

INI = """\
[web]
w1 ansible_host=127.0.0.1 ansible_port=2222 ansible_user=deploy
w2 ansible_connection=local
w3 ansible_connection="{{ conn }}" conn=ssh
[db]
d1 ansible_connection=docker
"""


def test_may_use_ssh_only_rules_out_plain_non_ssh_connections(tmp_path: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_text(INI)
    inv = inventory.load((path,))
    assert {h: inv.may_use_ssh(h) for h in inv.all_hosts()} == {"w1": True, "w2": False, "w3": True, "d1": False}


def test_preflight_specs_equal_a_fresh_parse(tmp_path: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_text(INI)
    specs = preflight.specs(inventory.load((path,)), "all")
    assert specs == preflight.hosts_from_inventory(path, "all")
    assert [(s.name, s.address, s.port, s.user) for s in specs] == [("w1", "127.0.0.1", 2222, "deploy"),
                                                                     ("w3", "w3", 22, None)]
