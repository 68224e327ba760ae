"""Shared fixtures.

Session-scoped service fixtures live in tests/support/ and are registered here
once as plugins (a session fixture imported into two modules would be two
fixtures, and two test beds).  The repo root goes on sys.path so that
``tests.support`` and ``testbed`` import with or without PYTHONPATH.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytest_plugins = ["tests.support.testbed", "tests.support.openbao"]


class DemoProject:
    """The bundled runbooks with a local inventory whose hosts live under tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts_dir = root / "hosts"

    def host_dir(self, host: str) -> Path:
        return self.hosts_dir / host

    def project(self, **overrides: object):  # type: ignore[no-untyped-def]
        from technician_ops.project import load_project

        return load_project(self.root, environ={}, **overrides)  # type: ignore[arg-type]

    def write_runbook(self, name: str, text: str) -> Path:
        path = self.root / "runbooks" / f"{name}.md"
        path.write_text(text)
        return path


def make_demo(tmp_path: Path) -> DemoProject:
    """The bundled runbooks and playbooks under ``tmp_path/proj``, hosts web1, web2 (web) and db1 (db)."""
    root = tmp_path / "proj"
    root.mkdir()
    for sub in ("runbooks", "playbooks"):
        if (REPO / sub).exists():
            shutil.copytree(REPO / sub, root / sub)
    hosts = root / "hosts"
    (root / "inventory").mkdir()
    lines = ["all:", "  vars:", "    ansible_connection: local", f"    demo_root: {hosts}", "  children:"]
    for group, names in (("web", ["web1", "web2"]), ("db", ["db1"])):
        lines += [f"    {group}:", "      hosts:"]
        for name in names:
            (hosts / name).mkdir(parents=True)
            lines.append(f"        {name}: {{state_dir: {hosts / name}}}")
    (root / "inventory" / "hosts.yml").write_text("\n".join(lines) + "\n")
    return DemoProject(root)


@pytest.fixture
def demo(tmp_path: Path) -> DemoProject:
    return make_demo(tmp_path)
