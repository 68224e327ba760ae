"""pytest fixtures for the SSH test bed (testbed/testbed.py).

``testbed`` brings the bed up once per session and always removes it, even when
tests fail.  It uses its own prefix (``tbt``), subnet (``10.203.1.0/24``) and a
temporary state dir, so a bed a developer started with ``testbed/up`` is left
alone.  Under pytest-xdist every worker brings up a bed of its own: worker
``gwN`` uses the prefix ``tbtN`` and the subnet ``10.203.(11+N).0/24`` (the
third octet of ``TOPS_TEST_TESTBED_SUBNET`` plus N when that is set), so
workers never share or sweep each other's hosts.  ``testbed_faults`` is the same bed for a test that breaks hosts: every
fault is healed after the test.

Environment: ``TOPS_TEST_TESTBED_HOSTS`` (default 3),
``TOPS_TEST_TESTBED_SUBNET`` and ``TOPS_TEST_TESTBED_PREFIX``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.testbed import Testbed, TestbedError

TEST_PREFIX = os.environ.get("TOPS_TEST_TESTBED_PREFIX", "tbt")
TEST_SUBNET = os.environ.get("TOPS_TEST_TESTBED_SUBNET", "10.203.1.0/24")
XDIST_SUBNET_BASE = 11  # worker gwN: 10.203.(11+N).0/24 by default


def worker_index() -> int | None:
    """N for the pytest-xdist worker ``gwN``; None outside xdist (or on its controller)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def bed_prefix_and_subnet() -> tuple[str, str]:
    """This process's test bed prefix and subnet: one per xdist worker, never shared."""
    n = worker_index()
    if n is None:
        return TEST_PREFIX, TEST_SUBNET
    prefix = f"{TEST_PREFIX}{n}"
    octets = TEST_SUBNET.split("/")[0].split(".")
    third = int(octets[2]) + n if "TOPS_TEST_TESTBED_SUBNET" in os.environ else XDIST_SUBNET_BASE + n
    if len(prefix) > 6 or third > 255:
        raise RuntimeError(f"xdist worker gw{n}: no room for a test bed prefix/subnet "
                           f"(prefix {prefix!r}, third octet {third})")
    return prefix, f"{octets[0]}.{octets[1]}.{third}.0/24"


def testbed_unavailable() -> str | None:
    """Why this machine cannot run the bed, or None."""
    if os.geteuid() != 0:
        return "the SSH test bed needs root (network namespaces, bind mounts)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"the SSH test bed needs `{tool}` (apt-get install -y iproute2 util-linux)"
    return None


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    reason = testbed_unavailable()
    if reason:
        pytest.skip(reason)
    prefix, subnet = bed_prefix_and_subnet()
    bed = Testbed(
        tmp_path_factory.mktemp("testbed"),
        hosts=int(os.environ.get("TOPS_TEST_TESTBED_HOSTS", "3")),
        prefix=prefix,
        subnet=subnet,
    )
    with brought_up(bed):
        yield bed


@contextlib.contextmanager
def brought_up(bed: Testbed) -> Iterator[Testbed]:
    """``bed`` up (what a killed session left swept first), and always down after; skipped without sshd."""
    bed.down(sweep=True)  # leftovers of a test session that was killed
    try:
        bed.up()
    except TestbedError as exc:
        if "apt-get" in str(exc):  # sshd absent and not installable here
            pytest.skip(f"SSH test bed unavailable: {exc}")
        raise
    try:
        yield bed
    finally:
        bed.down(sweep=True)


@pytest.fixture
def testbed_faults(testbed: Testbed) -> Iterator[Testbed]:
    """The session bed, healed after the test whatever it broke."""
    try:
        yield testbed
    finally:
        testbed.heal()


PRIVATE = ("/root", "/srv", "/tmp", "/var/tmp")  # testbed.DEFAULT_PRIVATE_PATHS


def node_runtime(repo: Path) -> tuple[str, list[str]]:
    """How a bed host runs technician-ops from this checkout as an execution node (its ``python``), and the
    private paths a bed can keep with it.

    A path that hides the checkout cannot be private.  The virtualenv's interpreter may live under one
    (a pyenv build in /root): then the system's python3 of the same version runs the virtualenv's
    packages, so /root stays private (sharing it would also run root's shell start-up, pyenv's rehash
    among it, on every SSH command of every bed host).  Else the interpreter's own path stays shared too.
    """
    def under(path: Path, private: str) -> bool:
        return str(path) == private or str(path).startswith(private + "/")

    import sysconfig

    repo = repo.resolve()
    private = [p for p in PRIVATE if not under(repo, p)]
    real = Path(sys.executable).resolve()
    if not any(under(real, p) for p in private):
        return sys.executable, private
    system = Path("/usr/bin/python3")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = subprocess.run([str(system), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True) if system.exists() else None
    packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    if found is not None and found.stdout.strip() == version and not any(under(packages, p) for p in private):
        return f"env PYTHONPATH={packages}:{repo} {system}", private
    return sys.executable, [p for p in private if not under(real, p)]
