"""Shared fixtures.

Session-scoped service fixtures live in tests/support/ and are registered here
once as plugins (a session fixture imported into two modules would be two
fixtures, and two test beds).  The repo root goes on sys.path so that
``tests.support`` and ``testbed`` import with or without PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytest_plugins = ["tests.support.testbed", "tests.support.openbao"]

# -- running under pytest-xdist (scripts/test: -n N) ----------------------------------------------

# Modules whose module-scoped fixture does the real work (runs, clusters, a browser's
# history) for all their tests: each runs whole on one worker, never once per worker.
ONE_WORKER_MODULES = (
    "tests/integration/test_public_content.py",
    "tests/integration/test_web.py",
    "tests/integration/test_report.py",
    "tests/integration/test_postmortem_stats.py",
    "tests/integration/test_db_failover.py",
    "tests/integration/test_execution_nodes.py",
)

# The longest files first, so no worker starts a minute-long test when the others are done
# (measured with --durations; a stale list only costs time, never a test).
SLOW_FIRST = (
    "tests/integration/test_execution_nodes.py",
    "tests/integration/test_public_content.py",
    "tests/integration/test_postmortem_stats.py",
    "tests/integration/test_security.py",
    "tests/integration/test_past_runs.py",
    "tests/integration/test_ssh_runs.py",
    "tests/integration/test_runs.py",
    "tests/integration/test_web.py",
    "tests/integration/test_step_kinds_backup_terraform.py",
    "tests/integration/test_ansible_fit.py",
    "tests/integration/test_undo.py",
    "tests/integration/test_db_failover.py",
    "tests/integration/test_serve.py",
    "tests/integration/test_team_store.py",
    "tests/test_bench_smoke.py",
    "tests/integration/test_accelerate.py",
    "tests/ci/test_schedule.py",
    "tests/unit/test_types.py",
    "tests/integration/test_vault_steps.py",
    "tests/integration/test_vault_recover.py",
    "tests/integration/test_outputs.py",
    "tests/integration/test_unattended.py",
    "tests/integration/test_audit_runs.py",
    "tests/integration/test_report.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))  # stable: order within a file kept


class _OneWorkerModules:
    """``--dist load``, except that each of ONE_WORKER_MODULES goes whole to one worker.

    (xdist's own ``loadgroup`` renames items to group them, which pytest 9.2 no longer
    lets a plugin do: its groups are silently ignored there.)"""

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: object) -> object:
        if config.getvalue("dist") != "load":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class Scheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _module(nodeid) if _module(nodeid) in ONE_WORKER_MODULES else nodeid

        return Scheduling(config, log)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):  # the hook exists only with xdist
        config.pluginmanager.register(_OneWorkerModules(), "tops-one-worker-modules")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On the xdist controller: sweep every worker's test bed, even after a worker crashed."""
    workers = getattr(session.config.option, "numprocesses", None)
    if not workers or os.environ.get("PYTEST_XDIST_WORKER") or os.geteuid() != 0:
        return
    from testbed.testbed import Testbed
    from tests.support.testbed import TEST_PREFIX

    for n in range(int(workers) + 8):  # workers replaced after a crash get the next numbers
        prefix = f"{TEST_PREFIX}{n}"
        if len(prefix) <= 6:
            Testbed(session.config._tmp_path_factory.getbasetemp() / f"sweep-{prefix}",  # type: ignore[attr-defined]
                    prefix=prefix).down(sweep=True)


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
