"""Preflight: inventory resolution (table-driven, no hosts needed) and the
SSH checks against the real test bed, one fault per reason."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest

from technician_ops.errors import ConfigError, DependencyUnavailable, ExitCode
from technician_ops.engine.preflight import (
    HostKeyPolicy,
    HostSpec,
    Reason,
    check_hosts,
    ensure_reachable,
    hosts_from_inventory,
    parse_ssh_options,
)
from testbed.testbed import Testbed

# ------------------------------------------------------------- inventory

INVENTORY = """\
[web]
web1 ansible_host=192.0.2.10 ansible_user=deploy ansible_ssh_private_key_file=~/keys/web
web2 ansible_host=192.0.2.11 ansible_port=2222

[db]
db1 ansible_host=192.0.2.20 ansible_ssh_common_args='-o UserKnownHostsFile=/kh/db -o StrictHostKeyChecking=accept-new'
db2 ansible_host=192.0.2.21 ansible_ssh_common_args='-oUserKnownHostsFile=/dev/null -oStrictHostKeyChecking=no'

[ctl]
localhost ansible_connection=local
docker1 ansible_connection=community.docker.docker

[web:vars]
ansible_user=www
http_port={{ 8000 + 80 }}

[db:vars]
ansible_user=postgres
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.ini"
    path.write_text(INVENTORY)
    return path


def test_inventory_reads_connection_vars_and_group_vars(inventory: Path) -> None:
    specs = {s.name: s for s in hosts_from_inventory(inventory, "all")}
    assert set(specs) == {"web1", "web2", "db1", "db2"}  # local and docker hosts are skipped
    web1, web2 = specs["web1"], specs["web2"]
    assert (web1.address, web1.port, web1.user) == ("192.0.2.10", 22, "deploy")  # host var beats group var
    assert web1.key_file == Path("~/keys/web").expanduser()
    assert web1.known_hosts is None and web1.host_key_policy is HostKeyPolicy.STRICT
    assert (web2.port, web2.user, web2.key_file) == (2222, "www", None)
    assert specs["db1"].known_hosts == Path("/kh/db")
    assert specs["db1"].host_key_policy is HostKeyPolicy.ACCEPT_NEW
    assert specs["db1"].user == "postgres"
    assert specs["db2"].host_key_policy is HostKeyPolicy.OFF and specs["db2"].known_hosts is None


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("db", ["db1", "db2"]),
        ("web:&web1", ["web1"]),
        ("all:!db", ["web1", "web2"]),
        ("web2,db1", ["web2", "db1"]),
        ("nomatch", []),
    ],
)
def test_inventory_patterns(inventory: Path, pattern: str, names: list[str]) -> None:
    assert [s.name for s in hosts_from_inventory(inventory, pattern)] == names


def test_missing_inventory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        hosts_from_inventory(tmp_path / "nope.ini", "all")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("-o UserKnownHostsFile=/a -o StrictHostKeyChecking=yes", {"userknownhostsfile": "/a", "stricthostkeychecking": "yes"}),
        ("-oPort=2200 -C -o 'User bob'", {"port": "2200", "user": "bob"}),
        ("-o User=first -o User=second", {"user": "first"}),  # ssh: the first value wins
        ("", {}),
    ],
)
def test_parse_ssh_options(args: str, expected: dict[str, str]) -> None:
    assert parse_ssh_options(args) == expected


# ------------------------------------------------------- against real sshd

testbed_only = [pytest.mark.testbed, pytest.mark.integration]


def _specs(bed: Testbed) -> dict[str, HostSpec]:
    return {s.name: s for s in hosts_from_inventory(bed.inventory_path, "all")}


@pytest.mark.testbed
@pytest.mark.integration
def test_all_hosts_pass(testbed: Testbed) -> None:
    specs = _specs(testbed)
    assert [s.name for s in specs.values()] == [h.name for h in testbed.hosts]
    assert check_hosts(list(specs.values()), timeout=5) == []
    ensure_reachable(list(specs.values()))  # does not raise


@pytest.mark.testbed
@pytest.mark.integration
def test_stopped_sshd_is_refused(testbed_faults: Testbed) -> None:
    testbed_faults.stop_sshd("db1")
    problems = check_hosts(list(_specs(testbed_faults).values()), timeout=3)
    assert [(p.host.name, p.reason) for p in problems] == [("db1", Reason.REFUSED)]


@pytest.mark.testbed
@pytest.mark.integration
def test_cut_link_times_out_concurrently(testbed_faults: Testbed) -> None:
    testbed_faults.link_down("web1")
    testbed_faults.link_down("db2")
    start = time.monotonic()
    problems = check_hosts(list(_specs(testbed_faults).values()), timeout=1.0)
    elapsed = time.monotonic() - start
    assert [(p.host.name, p.reason) for p in problems] == [("web1", Reason.TIMEOUT), ("db2", Reason.TIMEOUT)]
    assert elapsed < 1.9  # two timeouts in parallel, not in series


@pytest.mark.testbed
@pytest.mark.integration
def test_slow_host_passes_within_timeout_and_times_out_beyond(testbed_faults: Testbed) -> None:
    spec = _specs(testbed_faults)["web1"]
    testbed_faults.slow("web1", 100)
    assert check_hosts([spec], timeout=5) == []
    testbed_faults.slow("web1", 1500)
    [problem] = check_hosts([spec], timeout=0.8)
    assert problem.reason is Reason.TIMEOUT, problem


@pytest.mark.testbed
@pytest.mark.integration
def test_wrong_key_is_auth_failed(testbed: Testbed, tmp_path: Path) -> None:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    spec = dataclasses.replace(_specs(testbed)["web1"], key_file=key)
    [problem] = check_hosts([spec], timeout=5)
    assert problem.reason is Reason.AUTH_FAILED
    assert "root" in problem.message
    assert key.read_text() not in str(problem)  # no key material in messages


@pytest.mark.testbed
@pytest.mark.integration
def test_tampered_known_hosts_is_a_mismatch(testbed: Testbed, tmp_path: Path) -> None:
    spec = _specs(testbed)["db2"]
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    lines = testbed.known_hosts_path.read_text().splitlines()
    fake_type, fake_key = impostor.with_suffix(".pub").read_text().split()[:2]
    tampered = [f"{spec.address} {fake_type} {fake_key}" if ln.startswith(spec.address + " ") else ln
                for ln in lines]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(tampered) + "\n")
    [problem] = check_hosts([dataclasses.replace(spec, known_hosts=known)], timeout=5)
    assert problem.reason is Reason.HOST_KEY_MISMATCH
    assert "SHA256:" in problem.message


@pytest.mark.testbed
@pytest.mark.integration
def test_unknown_host_key(testbed: Testbed, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    spec = dataclasses.replace(_specs(testbed)["db1"], known_hosts=empty)
    [problem] = check_hosts([spec], timeout=5)
    assert problem.reason is Reason.HOST_KEY_UNKNOWN
    # accept-new lets an unknown key through; "no" skips checking altogether
    assert check_hosts([dataclasses.replace(spec, host_key_policy=HostKeyPolicy.ACCEPT_NEW)]) == []
    assert check_hosts([dataclasses.replace(spec, host_key_policy=HostKeyPolicy.OFF)]) == []


@pytest.mark.testbed
@pytest.mark.integration
def test_address_nobody_answers_for_is_unreachable(testbed: Testbed) -> None:
    """An unused address of the test bed's own subnet: ARP fails, the kernel says so."""
    net_base = testbed.state.subnet.split("/")[0].rsplit(".", 1)[0]
    spec = HostSpec(name="ghost", address=f"{net_base}.250", user="root")
    [problem] = check_hosts([spec], timeout=6)
    assert problem.reason is Reason.UNREACHABLE, problem


@pytest.mark.testbed
@pytest.mark.integration
def test_ensure_reachable_names_each_bad_host(testbed_faults: Testbed) -> None:
    testbed_faults.stop_sshd("web1")
    testbed_faults.link_down("db1")
    with pytest.raises(DependencyUnavailable) as info:
        ensure_reachable(list(_specs(testbed_faults).values()), timeout=1.0)
    err = info.value
    assert err.exit_code is ExitCode.TEMPFAIL
    lines = err.message.splitlines()
    assert "2 of 3 hosts" in lines[0]
    assert lines[1].strip().startswith("web1 (") and ": refused:" in lines[1]
    assert lines[2].strip().startswith("db1 (") and ": timeout:" in lines[2]
    assert err.hint and "--skip-preflight" in err.hint


@pytest.mark.testbed
@pytest.mark.integration
def test_missing_key_file_is_named(testbed: Testbed, tmp_path: Path) -> None:
    spec = dataclasses.replace(_specs(testbed)["web1"], key_file=tmp_path / "absent")
    [problem] = check_hosts([spec])
    assert problem.reason is Reason.OTHER
    assert str(tmp_path / "absent") in problem.message
