"""Public content runs under technician-ops as under ansible-playbook.

The content is vendored, unmodified, under tests/fixtures/public/ (see each
SOURCE.md): the ``ansible-sshd`` role (willshersystems/ansible-sshd, the
upstream of the Linux System Roles ``sshd`` role) and its public example
playbook ``example-root-login.yml``, which includes the role with a ``Match``
block.  The role reads facts (and its per-distribution variables by them),
renders ``sshd_config`` from a template and validates it with ``sshd -t``, and
notifies its reload handlers (which skip: the inventory sets
``sshd_allow_reload: false`` and friends, so no sshd is ever touched).  Its
writes go to ``sshd_config_file``, set per host in the inventory.

On each bed (local-connection hosts, and the SSH test bed) the same
inventory and vars are used three ways, each on fresh targets:

* ``raw``: plain ``ansible-playbook`` of the example playbook (the reference);
* ``playbook``: a ``kind=playbook`` step of the same file (its play says
  nothing about ``gather_facts``, so Ansible's default applies: gather; the
  step must honour that, or the facts tests below fail);
* ``include_role``: a ``kind=ansible`` step whose body is the example's own
  task, ``include_role: ansible-sshd`` with the same vars (``facts=true``:
  the step cannot see that the role reads facts);

and each technician-ops way a second time, which must change nothing.

The role is ~50 tasks, so every first run of every selected bed starts at once
in the background (each second run right after its first): a module fixture
starts them, the tests wait for the runs they read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from testbed.testbed import Testbed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PUBLIC = REPO / "tests" / "fixtures" / "public"
ROLE = PUBLIC / "ansible-sshd"
EXAMPLE = PUBLIC / "sshd-example-root-login" / "example-root-login.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key")
SSHD = Path("/usr/sbin/sshd")
STEP = "apply"
CONFIG = "sshd_config"
SSH_ROOT = "/srv/tops-public"  # a private path on the SSH test bed
TIMEOUT = 600
# The role is ~50 tasks, ~5 CPU-seconds per host and run on top of ~6 per run, and a bed takes five
# runs: one local-connection host (they all share this machine anyway), two SSH hosts (each its own
# private /srv, so two hosts show each one gets its own file).
LOCAL_HOSTS = ("pub1",)
SSH_HOSTS = 2

# Documented role variables only (see tests/fixtures/public/ansible-sshd/SOURCE.md).
ROLE_VARS: dict[str, Any] = {
    "sshd_config_file": "{{ pub_root }}/" + CONFIG,
    "sshd_backup": False,
    "sshd_HostKey": str(HOST_KEY),
    "sshd_verify_hostkeys": [],
    "sshd_manage_service": False,
    "sshd_allow_reload": False,
    "sshd_allow_restart": False,
    "sshd_allow_daemon_reload": False,
}
# The role's handlers that its config task notifies (listen: sshd_reload).
HANDLERS = {"Reload the SSH service", "Reload sshd Service (AIX)", "Reload the SSH service (OpenWrt)"}

# A notification callback for the raw ansible-playbook runs: what ansible-runner's events say for
# technician-ops (per host and task: ok, changed, skipped, failed, unreachable; handler starts; the
# recap), so the two are compared field by field and not through the text of the default output.
RECORDER = '''
import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "public_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._out = open(os.environ["PUBLIC_RECORD"], "w")

    def _write(self, **fields):
        self._out.write(json.dumps(fields) + "\\n")
        self._out.flush()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write(event="task_start", task=task.name or task.action, handler=False)

    def v2_playbook_on_handler_task_start(self, task):
        self._write(event="task_start", task=task.name or task.action, handler=True)

    def _result(self, result, status):
        task = result._task
        self._write(event="result", host=result._host.get_name(), task=task.name or task.action,
                    action=task.action, status=status)

    def v2_runner_on_ok(self, result):
        self._result(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._write(event="stats", **{key: {h: stats.summarize(h)[key] for h in stats.processed}
                                      for key in ("ok", "changed", "failures", "unreachable", "skipped")})
'''


@dataclass
class Run:
    """One run, reduced to what the tests compare."""

    rc: int
    output: str
    results: list[dict[str, Any]] = field(default_factory=list)  # per host and task, in order
    task_names: list[str] = field(default_factory=list)  # every task started, handlers included
    handlers: list[str] = field(default_factory=list)  # handler tasks started (raw runs)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # technician-ops --output json
    files: dict[str, dict[str, tuple[bytes, int, int]]] = field(default_factory=dict)  # host -> name -> (bytes, mode, mtime_ns)

    def sequence(self, host: str) -> list[tuple[str, str]]:
        """(task, status) on ``host`` in order, without the implicit fact gathering (technician-ops
        may answer it from its fact cache)."""
        return [(r["task"], r["status"]) for r in self.results
                if r["host"] == host and r["action"] not in ("gather_facts", "ansible.builtin.gather_facts")]

    def gathered(self) -> set[str]:
        return {r["host"] for r in self.results
                if r["action"] in ("gather_facts", "ansible.builtin.gather_facts") and r["status"] == "ok"}

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


@dataclass
class Bed:
    """A set of targets and how to reach them: the same inventory for every way of running."""

    name: str
    root: Path
    hosts: list[str]
    inventory: Any  # mode -> {file name under inventory/: text}
    host_dir: Any  # (mode, host) -> Path on this machine

    def __post_init__(self) -> None:
        self.runs: dict[str, Future[Run]] = {}


def _project(root: Path, bed: Bed, mode: str) -> Path:
    """The role in roles/, the example in playbooks/, the bed's inventory for ``mode``; fresh targets."""
    (root / "playbooks").mkdir(parents=True)
    shutil.copytree(ROLE, root / "roles" / "ansible-sshd")
    shutil.copy(EXAMPLE, root / "playbooks" / EXAMPLE.name)
    (root / "inventory").mkdir()
    for name, text in bed.inventory(mode).items():
        (root / "inventory" / name).write_text(text)
    for host in bed.hosts:
        bed.host_dir(mode, host).mkdir(parents=True, exist_ok=True)
    return root


def _runbooks(root: Path) -> None:
    (root / "runbooks").mkdir()
    (root / "runbooks" / "public-playbook.md").write_text(f"""---
name: public-playbook
summary: The public example playbook, as a playbook step.
hosts: pub
---

```yaml {{name={STEP} kind=playbook}}
file: playbooks/{EXAMPLE.name}
```
""")
    # The example's own task, verbatim, as the body of an ansible step.
    tasks = yaml.safe_load(EXAMPLE.read_text())[0]["tasks"]
    body = yaml.safe_dump(tasks, sort_keys=False, default_flow_style=False)
    (root / "runbooks" / "public-role.md").write_text(f"""---
name: public-role
summary: The role through include_role, with the example's vars.
hosts: pub
---

```yaml {{name={STEP} facts=true}}
{body}```
""")


def _snapshot(bed: Bed, mode: str) -> dict[str, dict[str, tuple[bytes, int, int]]]:
    files: dict[str, dict[str, tuple[bytes, int, int]]] = {}
    for host in bed.hosts:
        d = bed.host_dir(mode, host)
        files[host] = {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}
    return files


def _env(*, raw: bool = False) -> dict[str, str]:
    """This tree's code for technician-ops; Ansible's defaults for the raw runs."""
    env = {k: v for k, v in os.environ.items() if not (raw and k.startswith("ANSIBLE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _raw(bed: Bed, recorder_dir: Path) -> Run:
    root = bed.root / "raw"
    _project(root, bed, "raw")
    record = root / "record.jsonl"
    env = _env(raw=True) | {
        "ANSIBLE_ROLES_PATH": str(root / "roles"),
        "ANSIBLE_CALLBACK_PLUGINS": str(recorder_dir),
        "ANSIBLE_CALLBACKS_ENABLED": "public_record",
        "PUBLIC_RECORD": str(record),
    }
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(root / "inventory"), str(root / "playbooks" / EXAMPLE.name)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    run = Run(proc.returncode, proc.stdout + proc.stderr)
    for line in record.read_text().splitlines() if record.exists() else []:
        event = json.loads(line)
        if event["event"] == "task_start":
            run.task_names.append(event["task"])
            if event["handler"]:
                run.handlers.append(event["task"])
        elif event["event"] == "result":
            run.results.append(event)
        elif event["event"] == "stats":
            run.stats = {k: v for k, v in event.items() if k != "event"}
    run.files = _snapshot(bed, "raw")
    return run


_STATUS = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_skipped": "skipped",
           "runner_on_unreachable": "unreachable"}


def _tops(bed: Bed, mode: str, runbook: str) -> Run:
    root = bed.root / mode
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(root), "run", runbook,
                           "--output", "json"], cwd=root, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    run = Run(proc.returncode, proc.stderr + proc.stdout[-3000:])
    run.events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    run.task_names = [e["task"] for e in run.of("task_start") if e["step"] == STEP and e["phase"] == "run"]
    starts = run.of("run_start")
    if starts:  # ansible-runner's own events of the run: per task and host, and the recap
        artifacts = root / ".technician-ops" / "runs" / starts[0]["run_id"] / "artifacts"
        paths = sorted(artifacts.glob("*/job_events/*.json"), key=lambda p: int(p.name.split("-", 1)[0]))
        for path in paths:
            event = json.loads(path.read_text())
            data = event.get("event_data") or {}
            if event["event"] in _STATUS and data.get("host") in bed.hosts:
                res = data.get("res") or {}
                status = _STATUS[event["event"]]
                if status == "ok" and res.get("changed"):
                    status = "changed"
                run.results.append({"host": data["host"], "task": data.get("task") or data.get("task_action"),
                                    "action": data.get("task_action"), "status": status})
            elif event["event"] == "playbook_on_stats":
                # ansible-runner's recap lists only the hosts with a non-zero count
                run.stats = {mine: {h: (data.get(theirs) or {}).get(h, 0) for h in bed.hosts}
                             for mine, theirs in (("ok", "ok"), ("changed", "changed"), ("failures", "failures"),
                                                  ("unreachable", "dark"), ("skipped", "skipped"))}
    run.files = _snapshot(bed, mode)
    return run


def _again(first: Future[Run], bed: Bed, mode: str, runbook: str) -> Run:
    first.result()
    return _tops(bed, mode, runbook)


def _start(bed: Bed, pool: ThreadPoolExecutor, recorder_dir: Path) -> None:
    """Every run of ``bed``: the three first runs at once, then the two second runs."""
    for mode in ("playbook", "include_role"):
        _runbooks(_project(bed.root / mode, bed, mode))
    bed.runs["raw"] = pool.submit(_raw, bed, recorder_dir)
    for mode, runbook in (("playbook", "public-playbook"), ("include_role", "public-role")):
        first = pool.submit(_tops, bed, mode, runbook)
        bed.runs[mode] = first
        bed.runs[mode + "-again"] = pool.submit(_again, first, bed, mode, runbook)


def _content_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the sshd role validates its file with sshd -t and manages /run/sshd: needs root"
    for path in (SSHD, HOST_KEY, ANSIBLE_PLAYBOOK):
        if not path.exists():
            return f"{path} is missing (OpenSSH server and ansible-core are needed)"
    return None


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadPoolExecutor, Path]]:
    reason = _content_unavailable()
    if reason:
        pytest.skip(reason)
    recorder_dir = tmp_path_factory.mktemp("public-recorder")
    (recorder_dir / "public_record.py").write_text(RECORDER)
    with ThreadPoolExecutor(max_workers=12) as executor:
        yield executor, recorder_dir


def _local_inventory(root: Path) -> Any:
    def inventory(mode: str) -> dict[str, str]:
        hosts = {h: {"pub_root": str(root / mode / "hosts" / h)} for h in LOCAL_HOSTS}
        data = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                                 **ROLE_VARS},
                        "children": {"pub": {"hosts": hosts}}}}
        return {"hosts.yml": yaml.safe_dump(data, sort_keys=False)}
    return inventory


@pytest.fixture(scope="module")
def local_bed(pool: tuple[ThreadPoolExecutor, Path], tmp_path_factory: pytest.TempPathFactory) -> Bed:
    root = tmp_path_factory.mktemp("public-local")
    bed = Bed("local", root, list(LOCAL_HOSTS), _local_inventory(root),
              lambda mode, host: root / mode / "hosts" / host)
    _start(bed, *pool)
    return bed


@pytest.fixture(scope="module")
def ssh_bed(pool: tuple[ThreadPoolExecutor, Path], testbed: Testbed,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("public-ssh")
    targets = testbed.hosts[:SSH_HOSTS]
    names = [h.name for h in targets]
    lines = [line for line in testbed.inventory_path.read_text().splitlines() if line.split(" ", 1)[0] in names]

    def inventory(mode: str) -> dict[str, str]:
        data = {"all": {"vars": {"pub_root": f"{SSH_ROOT}/{mode}", **ROLE_VARS}}}
        return {"hosts.ini": "[pub]\n" + "\n".join(lines) + "\n", "vars.yml": yaml.safe_dump(data, sort_keys=False)}

    bed = Bed("ssh", root, names, inventory,
              lambda mode, host: testbed.private_dir(host, "/srv") / SSH_ROOT.removeprefix("/srv/") / mode)
    _start(bed, *pool)
    try:
        yield bed
    finally:
        for future in bed.runs.values():
            future.exception()  # wait: nothing may still write there
        for host in names:
            shutil.rmtree(testbed.private_dir(host, "/srv") / SSH_ROOT.removeprefix("/srv/"), ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _start_every_selected_bed(request: pytest.FixtureRequest) -> None:
    """Start the runs of every bed this session selected before the first test waits on one."""
    beds = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and spec is not None and spec.params.get("bed") not in beds:
            beds.append(spec.params["bed"])
    for bed in beds:
        try:
            request.getfixturevalue(f"{bed}_bed")
        except pytest.skip.Exception:
            pass  # its tests skip, with the reason


BEDS = [pytest.param("local", id="local"), pytest.param("ssh", id="ssh", marks=pytest.mark.testbed)]
MODES = ["playbook", "include_role"]
KIND = {"playbook": "playbook", "include_role": "ansible"}


def _bed(request: pytest.FixtureRequest, name: str) -> Bed:
    bed: Bed = request.getfixturevalue(f"{name}_bed")
    return bed


def _got(bed: Bed, key: str) -> Run:
    return bed.runs[key].result(timeout=TIMEOUT)


def _succeeded(run: Run) -> None:
    ends = run.of("run_end")
    assert run.rc == 0 and ends and ends[0]["outcome"] == "succeeded", run.output[-3000:]


@pytest.mark.parametrize("bed", BEDS)
def test_raw_ansible_playbook_runs_the_content_offline(request: pytest.FixtureRequest, bed: str) -> None:
    """The reference: the example playbook under plain ansible-playbook writes the rendered,
    validated file on every host, changes exactly that, and runs the notified handlers."""
    b = _bed(request, bed)
    raw = _got(b, "raw")
    assert raw.rc == 0, raw.output[-3000:]
    assert raw.stats["changed"] == {h: 1 for h in b.hosts}
    assert raw.stats["failures"] == {h: 0 for h in b.hosts} and raw.stats["unreachable"] == {h: 0 for h in b.hosts}
    assert raw.gathered() == set(b.hosts)  # no gather_facts key: Ansible's default gathers
    assert set(raw.handlers) == HANDLERS
    for host in b.hosts:
        text = raw.files[host][CONFIG][0].decode()
        assert "PermitRootLogin no\n" in text and "Match Address 192.0.2.0/24\n  PasswordAuthentication yes\n" in text
        assert f"HostKey {HOST_KEY}\n" in text
        assert list(raw.files[host]) == [CONFIG]  # no backup copies, nothing else


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_first_run_does_what_ansible_playbook_does(request: pytest.FixtureRequest, bed: str, mode: str) -> None:
    """Same per-host outcome of every task (so the same facts were there), same changed count."""
    b = _bed(request, bed)
    raw, run = _got(b, "raw"), _got(b, mode)
    _succeeded(run)
    assert [(e["step"], e["kind"]) for e in run.of("step_start")] == [(STEP, KIND[mode])]
    assert {e["host"]: e["status"] for e in run.of("host_result") if e["step"] == STEP} == {h: "changed" for h in b.hosts}
    for host in b.hosts:
        assert run.sequence(host) == raw.sequence(host), host
    assert run.stats["changed"] == raw.stats["changed"]
    assert run.stats["failures"] == raw.stats["failures"] and run.stats["unreachable"] == raw.stats["unreachable"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_facts_are_gathered_as_under_ansible_playbook(request: pytest.FixtureRequest, bed: str, mode: str) -> None:
    """The play gathers facts on every target before the role runs, as ansible-playbook's did; the
    role's own fallback (gather a subset when facts are missing) therefore skips, as it did there."""
    b = _bed(request, bed)
    raw, run = _got(b, "raw"), _got(b, mode)
    assert run.gathered() == raw.gathered() == set(b.hosts)
    fallback = "Ensure ansible_facts used by role"
    for host in b.hosts:
        assert (fallback, "skipped") in run.sequence(host) and (fallback, "skipped") in raw.sequence(host)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_notified_handlers_run_and_show_in_the_events(request: pytest.FixtureRequest, bed: str, mode: str) -> None:
    b = _bed(request, bed)
    raw, run = _got(b, "raw"), _got(b, mode)
    _succeeded(run)
    assert HANDLERS <= set(run.task_names)  # task_start events of the step, as in --output json
    assert [t for t in run.task_names if t in HANDLERS] == raw.handlers
    for host in b.hosts:  # each handler reached every host (and skipped there by its when:)
        assert [t for t, s in run.sequence(host) if t in HANDLERS and s == "skipped"] == raw.handlers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_same_files_on_every_host(request: pytest.FixtureRequest, bed: str, mode: str) -> None:
    b = _bed(request, bed)
    raw, run = _got(b, "raw"), _got(b, mode)
    for host in b.hosts:
        assert list(run.files[host]) == list(raw.files[host]) == [CONFIG]
        content, filemode, _ = run.files[host][CONFIG]
        assert (content, filemode) == raw.files[host][CONFIG][:2], host


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_second_run_changes_nothing(request: pytest.FixtureRequest, bed: str, mode: str) -> None:
    b = _bed(request, bed)
    first, again = _got(b, mode), _got(b, mode + "-again")
    _succeeded(again)
    assert {e["host"]: e["status"] for e in again.of("host_result") if e["step"] == STEP} == {h: "ok" for h in b.hosts}
    assert not any(e["changed"] or e["changed_unknown"] for e in again.of("host_result"))
    assert again.stats["changed"] == {h: 0 for h in b.hosts}
    assert not HANDLERS & set(again.task_names)  # nothing changed: nothing notified
    assert again.files == first.files  # same bytes, modes and mtimes: not even rewritten
