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

import os
import shutil
from collections.abc import Iterator

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
