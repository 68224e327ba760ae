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

On local-connection hosts and on hosts of the SSH test bed, together in one
inventory (the same vars), the content runs three ways, each on fresh targets:

* ``raw``: plain ``ansible-playbook`` of the example playbook (the reference);
* ``playbook``: a ``kind=playbook`` step of the same file (its play says
  nothing about ``gather_facts``, so Ansible's default applies: gather; the
  step must honour that, or the facts tests below fail);
* ``include_role``: a ``kind=ansible`` step whose body is the example's own
  task, ``include_role: ansible-sshd`` with the same vars (no ``facts=``: a
  step that includes a role gathers, as ansible-playbook does);

and each technician-ops way a second time, which must change nothing.

The role is ~50 tasks, so each run serves both beds and the three first runs
start at once in the background (each second run right after its first): a
module fixture starts them, the tests wait for the runs they read.
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
# The role is ~50 tasks: ~5 CPU-seconds per host and run on top of ~6 per run, and there are five
# runs. One local-connection host (they all share this machine anyway), two SSH hosts (each its own
# private /srv: each gets its own file).
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
class Targets:
    """Every selected host, local-connection and SSH, in one inventory per way of running: one
    ansible-playbook process per run serves both beds (the role's fixed cost is paid once)."""

    root: Path
    local: list[str]
    ssh_lines: list[str]  # the SSH test bed's inventory lines of the chosen hosts
    testbed: Testbed | None
    no_ssh: str = ""  # why the SSH hosts are absent, when they were selected
    runs: dict[str, Future[Run]] = field(default_factory=dict)

    @property
    def ssh(self) -> list[str]:
        return [line.split(" ", 1)[0] for line in self.ssh_lines]

    @property
    def hosts(self) -> list[str]:
        return self.local + self.ssh

    def of_bed(self, bed: str) -> list[str]:
        hosts = self.local if bed == "local" else self.ssh
        if not hosts:
            pytest.skip(self.no_ssh or f"no {bed} hosts selected")
        return hosts

    def host_dir(self, mode: str, host: str) -> Path:
        if host in self.local:
            return self.root / mode / "hosts" / host
        assert self.testbed is not None
        return self.testbed.private_dir(host, "/srv") / SSH_ROOT.removeprefix("/srv/") / mode

    def inventory(self, mode: str) -> dict[str, str]:
        local = {h: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                     "pub_root": str(self.host_dir(mode, h))} for h in self.local}
        data = {"all": {"vars": ROLE_VARS, "children": {"pub": {"hosts": local}}}}
        files = {"hosts.yml": yaml.safe_dump(data, sort_keys=False)}
        if self.ssh_lines:
            files["ssh.ini"] = "[pub]\n" + "".join(f"{line} pub_root={SSH_ROOT}/{mode}\n" for line in self.ssh_lines)
        return files


def _project(root: Path, targets: Targets, mode: str) -> Path:
    """The role in roles/, the example in playbooks/, the inventory for ``mode``; fresh targets."""
    (root / "playbooks").mkdir(parents=True)
    shutil.copytree(ROLE, root / "roles" / "ansible-sshd")
    shutil.copy(EXAMPLE, root / "playbooks" / EXAMPLE.name)
    (root / "inventory").mkdir()
    for name, text in targets.inventory(mode).items():
        (root / "inventory" / name).write_text(text)
    for host in targets.hosts:
        targets.host_dir(mode, host).mkdir(parents=True, exist_ok=True)
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

```yaml {{name={STEP}}}
{body}```

```yaml {{rollback={STEP}}}
- ansible.builtin.file: {{path: "{{{{ sshd_config_file }}}}", state: absent}}
```
""")


def _snapshot(targets: Targets, mode: str) -> dict[str, dict[str, tuple[bytes, int, int]]]:
    files: dict[str, dict[str, tuple[bytes, int, int]]] = {}
    for host in targets.hosts:
        d = targets.host_dir(mode, host)
        files[host] = {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}
    return files


def _env(*, raw: bool = False) -> dict[str, str]:
    """This tree's code for technician-ops; Ansible's defaults for the raw runs."""
    env = {k: v for k, v in os.environ.items() if not (raw and k.startswith("ANSIBLE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _raw(targets: Targets, recorder_dir: Path) -> Run:
    root = targets.root / "raw"
    _project(root, targets, "raw")
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
    run.files = _snapshot(targets, "raw")
    return run


_STATUS = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_skipped": "skipped",
           "runner_on_unreachable": "unreachable"}


def _tops(targets: Targets, mode: str, runbook: str) -> Run:
    root = targets.root / mode
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
            if event["event"] in _STATUS and data.get("host") in targets.hosts:
                res = data.get("res") or {}
                status = _STATUS[event["event"]]
                if status == "ok" and res.get("changed"):
                    status = "changed"
                run.results.append({"host": data["host"], "task": data.get("task") or data.get("task_action"),
                                    "action": data.get("task_action"), "status": status})
            elif event["event"] == "playbook_on_stats":
                # ansible-runner's recap lists only the hosts with a non-zero count
                run.stats = {mine: {h: (data.get(theirs) or {}).get(h, 0) for h in targets.hosts}
                             for mine, theirs in (("ok", "ok"), ("changed", "changed"), ("failures", "failures"),
                                                  ("unreachable", "dark"), ("skipped", "skipped"))}
    run.files = _snapshot(targets, mode)
    return run


def _again(first: Future[Run], targets: Targets, mode: str, runbook: str) -> Run:
    first.result()
    return _tops(targets, mode, runbook)


def _start(targets: Targets, pool: ThreadPoolExecutor, recorder_dir: Path) -> None:
    """The three first runs at once; each second run right after its first."""
    for mode in ("playbook", "include_role"):
        _runbooks(_project(targets.root / mode, targets, mode))
    targets.runs["raw"] = pool.submit(_raw, targets, recorder_dir)
    for mode, runbook in (("playbook", "public-playbook"), ("include_role", "public-role")):
        first = pool.submit(_tops, targets, mode, runbook)
        targets.runs[mode] = first
        targets.runs[mode + "-again"] = pool.submit(_again, first, targets, mode, runbook)


def _content_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the sshd role validates its file with sshd -t and manages /run/sshd: needs root"
    for path in (SSHD, HOST_KEY, ANSIBLE_PLAYBOOK):
        if not path.exists():
            return f"{path} is missing (OpenSSH server and ansible-core are needed)"
    return None


BEDS = [pytest.param("local", id="local"), pytest.param("ssh", id="ssh", marks=pytest.mark.testbed)]
MODES = ["playbook", "include_role"]
KIND = {"playbook": "playbook", "include_role": "ansible"}


@pytest.fixture(scope="module")
def targets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    """Every run, started in the background over the hosts of the beds this session selected."""
    reason = _content_unavailable()
    if reason:
        pytest.skip(reason)
    selected = {item.callspec.params.get("bed") for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    testbed: Testbed | None = None
    no_ssh = ""
    if "ssh" in selected:
        try:
            testbed = request.getfixturevalue("testbed")
        except pytest.skip.Exception as exc:  # the SSH tests skip with its reason; the local ones run
            no_ssh = str(exc)
    ssh_lines = []
    if testbed is not None:
        names = [h.name for h in testbed.hosts[:SSH_HOSTS]]
        ssh_lines = [line for line in testbed.inventory_path.read_text().splitlines()
                     if line.split(" ", 1)[0] in names]
    local = list(LOCAL_HOSTS) if "local" in selected else []
    if not local and not ssh_lines:
        pytest.skip(no_ssh or "no hosts selected")
    recorder_dir = tmp_path_factory.mktemp("public-recorder")
    (recorder_dir / "public_record.py").write_text(RECORDER)
    t = Targets(tmp_path_factory.mktemp("public"), local, ssh_lines, testbed, no_ssh)
    with ThreadPoolExecutor(max_workers=5) as pool:  # raw, two first runs, two second runs
        _start(t, pool, recorder_dir)
        try:
            yield t
        finally:
            for future in t.runs.values():
                future.exception()  # wait: nothing may still write there
            if testbed is not None:
                for host in t.ssh:
                    shutil.rmtree(testbed.private_dir(host, "/srv") / SSH_ROOT.removeprefix("/srv/"), ignore_errors=True)


def _got(targets: Targets, key: str) -> Run:
    return targets.runs[key].result(timeout=TIMEOUT)


def _succeeded(run: Run) -> None:
    ends = run.of("run_end")
    assert run.rc == 0 and ends and ends[0]["outcome"] == "succeeded", run.output[-3000:]


def _host_status(run: Run, hosts: list[str]) -> dict[str, str]:
    return {e["host"]: e["status"] for e in run.of("host_result") if e["step"] == STEP and e["host"] in hosts}


def _only(counts: dict[str, int], hosts: list[str]) -> dict[str, int]:
    return {h: counts[h] for h in hosts}


@pytest.mark.parametrize("bed", BEDS)
def test_raw_ansible_playbook_runs_the_content_offline(targets: Targets, bed: str) -> None:
    """The reference: the example playbook under plain ansible-playbook writes the rendered,
    validated file on every host, changes exactly that, and runs the notified handlers."""
    hosts = targets.of_bed(bed)
    raw = _got(targets, "raw")
    assert raw.rc == 0, raw.output[-3000:]
    assert _only(raw.stats["changed"], hosts) == {h: 1 for h in hosts}
    assert _only(raw.stats["failures"], hosts) == _only(raw.stats["unreachable"], hosts) == {h: 0 for h in hosts}
    assert set(hosts) <= raw.gathered()  # no gather_facts key: Ansible's default gathers
    assert set(raw.handlers) == HANDLERS
    for host in hosts:
        text = raw.files[host][CONFIG][0].decode()
        assert "PermitRootLogin no\n" in text and "Match Address 192.0.2.0/24\n  PasswordAuthentication yes\n" in text
        assert f"HostKey {HOST_KEY}\n" in text
        assert list(raw.files[host]) == [CONFIG]  # no backup copies, nothing else


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_first_run_does_what_ansible_playbook_does(targets: Targets, bed: str, mode: str) -> None:
    """Same per-host outcome of every task (so the same facts were there), same changed count."""
    hosts = targets.of_bed(bed)
    raw, run = _got(targets, "raw"), _got(targets, mode)
    _succeeded(run)
    assert [(e["step"], e["kind"]) for e in run.of("step_start")] == [(STEP, KIND[mode])]
    assert _host_status(run, hosts) == {h: "changed" for h in hosts}
    for host in hosts:
        assert run.sequence(host) == raw.sequence(host), host
    for count in ("changed", "failures", "unreachable"):
        assert _only(run.stats[count], hosts) == _only(raw.stats[count], hosts), count


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_facts_are_gathered_as_under_ansible_playbook(targets: Targets, bed: str, mode: str) -> None:
    """The play gathers facts on every target before the role runs, as ansible-playbook's did; the
    role's own fallback (gather a subset when facts are missing) therefore skips, as it did there."""
    hosts = targets.of_bed(bed)
    raw, run = _got(targets, "raw"), _got(targets, mode)
    assert set(hosts) <= run.gathered() and set(hosts) <= raw.gathered()
    fallback = "Ensure ansible_facts used by role"
    for host in hosts:
        assert (fallback, "skipped") in run.sequence(host) and (fallback, "skipped") in raw.sequence(host)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_notified_handlers_run_and_show_in_the_events(targets: Targets, bed: str, mode: str) -> None:
    hosts = targets.of_bed(bed)
    raw, run = _got(targets, "raw"), _got(targets, mode)
    _succeeded(run)
    assert HANDLERS <= set(run.task_names)  # task_start events of the step, as in --output json
    assert [t for t in run.task_names if t in HANDLERS] == raw.handlers
    for host in hosts:  # each handler reached every host (and skipped there by its when:)
        assert [t for t, s in run.sequence(host) if t in HANDLERS and s == "skipped"] == raw.handlers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_same_files_on_every_host(targets: Targets, bed: str, mode: str) -> None:
    hosts = targets.of_bed(bed)
    raw, run = _got(targets, "raw"), _got(targets, mode)
    for host in hosts:
        assert list(run.files[host]) == list(raw.files[host]) == [CONFIG]
        content, filemode, _ = run.files[host][CONFIG]
        assert (content, filemode) == raw.files[host][CONFIG][:2], host


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bed", BEDS)
def test_second_run_changes_nothing(targets: Targets, bed: str, mode: str) -> None:
    hosts = targets.of_bed(bed)
    first, again = _got(targets, mode), _got(targets, mode + "-again")
    _succeeded(again)
    assert _host_status(again, hosts) == {h: "ok" for h in hosts}
    assert not any(e["changed"] or e["changed_unknown"] for e in again.of("host_result") if e["host"] in hosts)
    assert _only(again.stats["changed"], hosts) == {h: 0 for h in hosts}
    assert not HANDLERS & set(again.task_names)  # nothing changed: nothing notified
    for host in hosts:
        assert again.files[host] == first.files[host], host  # same bytes, modes, mtimes: not even rewritten
