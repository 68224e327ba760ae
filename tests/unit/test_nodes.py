"""Execution nodes without a network: configuration, assignment, refusals, versions (engine/nodes.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from technician_ops.engine import nodes
from technician_ops.errors import ConfigError, ExitCode
from technician_ops.project import Project, load_project

PACKAGE = Path(nodes.__file__).resolve().parents[1]


def _project(tmp_path: Path, toml: str) -> Project:
    (tmp_path / "runbooks").mkdir(exist_ok=True)
    (tmp_path / "technician-ops.toml").write_text(toml)
    return load_project(tmp_path, environ={})


def test_nodes_are_read_with_their_defaults(tmp_path: Path) -> None:
    project = _project(tmp_path, """
[execution_nodes.site-b]
host = "web4"
groups = ["site_b"]

[execution_nodes."eu.1"]
address = "10.0.0.5"
port = 2222
user = "ops"
python = "env PYTHONPATH=/opt/tops /usr/bin/python3"
work_dir = "/dev/shm"
hosts = ["db9"]
""")
    b, eu = project.execution_nodes["site-b"], project.execution_nodes["eu.1"]
    assert (b.host, b.address, b.python, b.work_dir, b.groups) == ("web4", None, ("python3",), "/tmp", ("site_b",))
    assert (eu.address, eu.port, eu.user, eu.python, eu.work_dir, eu.hosts) == (
        "10.0.0.5", 2222, "ops", ("env", "PYTHONPATH=/opt/tops", "/usr/bin/python3"), "/dev/shm", ("db9",))


@pytest.mark.parametrize("table, says", [
    ('[execution_nodes.a]\nhost = "x"\naddress = "y"\n', "either host"),
    ('[execution_nodes.a]\n', "either host"),
    ('[execution_nodes.Site_B]\nhost = "x"\n', "a node's name"),
    ('[execution_nodes.local]\nhost = "x"\n', "not 'local'"),
    ('[execution_nodes.a]\nhost = "x"\nwrk_dir = "/tmp"\n', "unknown setting 'wrk_dir'"),
    ('[execution_nodes.a]\nhost = "x"\npython = ""\n', "python must name"),
    ('[execution_nodes.a]\nhost = "x"\npython = "env \\"unclosed"\n', "python"),
    ('[execution_nodes.a]\nhost = "x"\nport = 70000\n', "port"),
    ('[execution_nodes.a]\nhost = "x"\nwork_dir = "tmp"\n', "absolute"),
    ('[execution_nodes.a]\nhost = "x"\ngroups = "site"\n', "groups must be a list"),
    ('[execution_nodes.a]\nhost = "x\\u001b[2J"\n', "printable"),
    ('execution_nodes = 3\n', "table of nodes"),
])
def test_a_bad_node_is_a_config_error_naming_file_and_node(tmp_path: Path, table: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        _project(tmp_path, table)
    assert err.value.exit_code == ExitCode.CONFIG
    assert "technician-ops.toml" in str(err.value) and says in str(err.value)


class FakeInventory:
    """Hosts, groups and each host's technician_ops_execution_node, as engine/inventory.Inventory answers."""

    def __init__(self, groups: dict[str, list[str]], node_var: dict[str, str]) -> None:
        self.groups, self.node_var = groups, node_var

    def hosts(self, pattern: str) -> list[str]:
        out: list[str] = []
        for part in pattern.split(":"):
            out += self.groups.get(part, [part] if any(part in g for g in self.groups.values()) else [])
        return out

    def execution_node(self, host: str) -> str | None:
        return self.node_var.get(host)


def test_assignment_the_host_variable_then_the_nodes_hosts_then_their_groups(tmp_path: Path) -> None:
    project = _project(tmp_path, """
[execution_nodes.a]
host = "n1"
groups = ["site"]
[execution_nodes.b]
host = "n2"
hosts = ["web2"]
""")
    inv = FakeInventory({"site": ["web1", "web2", "web3"], "db": ["db1"]}, {"web3": "b"})
    assert nodes.assign(["web1", "web2", "web3", "db1"], inv, project) == {"web1": "a", "web2": "b", "web3": "b"}
    shares = nodes.participants_of({"web1": "a", "web2": "b", "web3": "b"}, ["web1", "web2", "web3", "db1"])
    assert shares == {"local": ["db1"], "a": ["web1"], "b": ["web2", "web3"]}


@pytest.mark.parametrize("value", ["c", "{{ node }}", "B"])
def test_a_host_naming_no_configured_node_is_refused(tmp_path: Path, value: str) -> None:
    project = _project(tmp_path, '[execution_nodes.b]\nhost = "n2"\n')
    with pytest.raises(ConfigError, match="host web1: technician_ops_execution_node .* names no execution node"):
        nodes.assign(["web1"], FakeInventory({"web": ["web1"]}, {"web1": value}), project)


def test_without_nodes_nothing_is_assigned_and_a_stray_variable_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path, "")
    assert nodes.assign(["web1"], FakeInventory({"web": ["web1"]}, {}), project) == {}
    with pytest.raises(ConfigError, match="none is configured"):
        nodes.assign(["web1"], FakeInventory({"web": ["web1"]}, {"web1": "a"}), project)


def test_kinds_that_keep_state_on_the_controller_are_refused_on_a_nodes_hosts() -> None:
    from technician_ops import steps

    registry = steps.registry()
    assert {k for k, kind in registry.items() if not kind.runs_on_nodes} == {"backup", "vault", "playbook"}

    def plan(kind: str) -> Any:
        ps = SimpleNamespace(kind=registry[kind], hosts="db", name="save", step=SimpleNamespace(line=12))
        return SimpleNamespace(steps=[ps], runbook=SimpleNamespace(path=Path("runbooks/x.md")),
                               host_patterns=lambda p: ["db"])

    inv = FakeInventory({"db": ["db1", "db2"]}, {})
    with pytest.raises(ConfigError, match=r"runbooks/x.md:12: step 'save' \(backup\) runs on db2, behind execution node b"):
        nodes.refuse_unsupported(plan("backup"), inv, {"db2": "b"})
    nodes.refuse_unsupported(plan("backup"), inv, {})  # no node host: fine
    nodes.refuse_unsupported(plan("shell"), inv, {"db2": "b"})


def test_a_version_mismatch_names_both_sides() -> None:
    here = nodes.versions()
    assert set(nodes.CHECKED) <= set(here)
    assert nodes.mismatch("site-b", here, dict(here)) is None
    assert nodes.mismatch("site-b", here, {**here, "python": "3.12.0"}) is None  # reported only
    err = nodes.mismatch("site-b", here, {**here, "ansible-core": "2.18.3"})
    assert err is not None and err.exit_code == ExitCode.CONFIG
    assert f"execution node site-b: ansible-core {here['ansible-core']} here, 2.18.3 on the node" in str(err)


def test_the_plugin_digest_follows_every_plugin_file(tmp_path: Path) -> None:
    copy = tmp_path / "technician_ops"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert nodes.plugins_digest(copy) == nodes.plugins_digest()
    for rel in ("ansible_plugins/action/technician_ops_gate.py", "steps/vault/action/technician_ops_vault.py",
                "node_agent.py"):
        path = copy / rel
        if not path.exists():
            continue
        before = nodes.plugins_digest(copy)
        path.write_text(path.read_text() + "\n# changed\n")
        assert nodes.plugins_digest(copy) != before, rel


def test_host_specs_cross_the_wire_unchanged() -> None:
    from technician_ops.engine.preflight import HostKeyPolicy, HostSpec

    spec = HostSpec("db2", "10.0.0.7", 2222, "root", Path("/k/id"), Path("/k/known"), HostKeyPolicy.ACCEPT_NEW,
                    "ssh", "-o X=1", None, False, None)
    import json

    assert nodes.spec_from_json(json.loads(json.dumps(nodes.spec_to_json(spec)))) == spec


def test_a_host_two_nodes_take_by_their_groups_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path, '[execution_nodes.a]\nhost = "n1"\ngroups = ["web"]\n'
                                 '[execution_nodes.b]\nhost = "n2"\ngroups = ["db"]\n')
    inv = FakeInventory({"web": ["web1", "both"], "db": ["db1", "both"]}, {})
    with pytest.raises(ConfigError, match="execution nodes a and b both take host both"):
        nodes.assign(["web1", "db1", "both"], inv, project)
    assert nodes.assign(["web1", "db1", "both"], FakeInventory(inv.groups, {"both": "b"}), project)["both"] == "b"


def test_a_node_may_ask_the_channel_for_secrets_and_gates_only(tmp_path: Path) -> None:
    import json
    import socket

    from technician_ops.engine.control import ControlServer
    from technician_ops.engine.handlers import Environ

    seen: list[Any] = []
    handlers = {"environ": Environ({"VAULT_TOKEN": "controller-credential"}),
                "ask": lambda r: seen.append(r) or {"ok": True, "approved": True},
                "secret": lambda r: {"ok": True, "value": r["participant"]}}

    def call(server: ControlServer, token: str, op: str, **extra: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(server.path))
            sock.sendall(json.dumps({"op": op, "token": token, **extra}).encode() + b"\n")
            return json.loads(sock.makefile().readline())

    with ControlServer(handlers) as server:
        node = server.participant_token("site-b")
        assert call(server, node, "secret", participant="local") == {"ok": True, "value": "site-b"}  # not its say
        assert call(server, node, "environ") == {"ok": True, "values": {}}  # the controller's credentials stay
        assert call(server, node, "ask", step="gate")["ok"] is False and seen == []  # no approvals from a node
        assert call(server, server.token, "environ")["values"] == {"VAULT_TOKEN": "controller-credential"}
        assert call(server, "forged", "secret")["error"] == "bad token"


def test_a_streamed_event_names_no_path(tmp_path: Path) -> None:
    from technician_ops.engine.executor import _EventFiles

    class Tracker:
        def handle(self, event: Any) -> None:
            pass

    files = _EventFiles(Tracker())  # type: ignore[arg-type]
    files.directory = tmp_path / "job_events"
    files.directory.mkdir()
    for uuid, counter in (("../../escape", 1), ("/etc/x", 2), ("a.b", 3), ("ok-1", "4")):
        assert files.handle({"uuid": uuid, "counter": counter}) is False
    assert files.handle({"uuid": "0f3c-9a", "counter": 5}) is False
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["5-0f3c-9a.json"]
