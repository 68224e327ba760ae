"""Undo that tells the truth (docs/undo.md), through the real CLI, ansible-runner and local hosts.

Each test asserts the hosts' files afterwards, the exit code, the audit record,
and that no process of the run outlives it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from technician_ops.errors import ExitCode

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def cli(demo, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start(demo, *args: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def record(demo, run_id: str | None = None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """The newest record (or ``run_id``'s), as ``audit export`` gives it."""
    proc = cli(demo, "audit", "export")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    if run_id is not None:
        return next(r for r in records if r["run_id"] == run_id)
    return records[-1]


def run_processes(demo) -> list[str]:  # type: ignore[no-untyped-def]
    """Processes of any run of this project still alive: Ansible's, its workers', the steps' (by their paths)."""
    proc = subprocess.run(["pgrep", "-af", str(demo.root)], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if "pgrep" not in line and "technician_ops.cli" not in line]


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def journal(demo, host: str) -> list[str]:  # type: ignore[no-untyped-def]
    path = demo.host_dir(host) / "journal"
    return path.read_text().split() if path.exists() else []


def step(name: str, body: str, *, attrs: str = "", lang: str = "yaml") -> str:
    return f"```{lang} {{name={name} {attrs}}}\n{body.strip()}\n```\n\n"


def undo(name: str, body: str) -> str:
    return f"```yaml {{rollback={name}}}\n{body.strip()}\n```\n\n"


def log(entry: str) -> str:
    return f'- ansible.builtin.shell: echo {entry} >> "{{{{ state_dir }}}}/journal"'


HEAD = "---\nhosts: web\n---\n\n"


# ------------------------------------------------------------------- partial changes


def test_a_step_that_changed_something_then_failed_is_undone_on_that_host(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("partial", HEAD + step("write-then-fail", """
- ansible.builtin.copy: {dest: "{{ state_dir }}/written", content: "new\\n"}
- ansible.builtin.command: /bin/false
""") + undo("write-then-fail", """
- ansible.builtin.file: {path: "{{ state_dir }}/written", state: absent}
""" + log("undo-write")))
    proc = cli(demo, "run", "partial", "--output", "json")
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stdout + proc.stderr
    for host in ("web1", "web2"):
        assert not (demo.host_dir(host) / "written").exists()
        assert journal(demo, host) == ["undo-write"]
    rec = record(demo)
    assert rec["outcome"] == "rolled_back" and rec["failed_step"] == "write-then-fail"
    assert rec["rollback"]["planned"] == ["write-then-fail"] and rec["rollback"]["outcome"] == "rolled_back"
    assert all(h["changed"] for h in rec["steps"]["write-then-fail"]["hosts"].values())
    assert run_processes(demo) == []


def test_a_step_failing_on_one_host_is_undone_where_it_succeeded_too(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("one-host-fails", HEAD + step("patch", """
- ansible.builtin.copy: {dest: "{{ state_dir }}/patched", content: "x\\n"}
- ansible.builtin.command: /bin/true
  changed_when: false
  failed_when: inventory_hostname == 'web2'
""") + undo("patch", """
- ansible.builtin.file: {path: "{{ state_dir }}/patched", state: absent}
""" + log("undo-patch")))
    proc = cli(demo, "run", "one-host-fails")
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stdout + proc.stderr
    for host in ("web1", "web2"):  # web1 succeeded, web2 failed after changing: both undone
        assert not (demo.host_dir(host) / "patched").exists(), host
        assert journal(demo, host) == ["undo-patch"], host
    rec = record(demo)
    assert rec["steps"]["patch"]["hosts"]["web1"]["status"] == "changed"
    assert rec["steps"]["patch"]["hosts"]["web2"]["status"] == "failed"
    assert sorted(rec["rollback"]["steps"]["patch"]["hosts"]) == ["web1", "web2"]


def test_nothing_changed_anywhere_is_the_only_exit_1(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("no-change", HEAD + step("look", """
- ansible.builtin.command: /bin/true
  changed_when: false
- ansible.builtin.command: /bin/false
  changed_when: false
""") + undo("look", log("undo-look")))
    proc = cli(demo, "run", "no-change")
    assert proc.returncode == ExitCode.FAILED, proc.stdout + proc.stderr
    assert journal(demo, "web1") == [] and journal(demo, "web2") == []
    assert record(demo)["rollback"] is None


def test_a_no_log_step_that_changed_is_undone(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("secret-change", """---
hosts: web
params:
  token: {type: secret, required: true}
---

""" + step("store", """
- ansible.builtin.copy: {dest: "{{ state_dir }}/token", content: "{{ token }}", mode: "0600"}
""") + undo("store", """
- ansible.builtin.file: {path: "{{ state_dir }}/token", state: absent}
""" + log("undo-store")) + step("boom", "- ansible.builtin.fail: {msg: planned}", attrs="kind=check"))
    proc = cli(demo, "run", "secret-change", env={"TECHNICIAN_OPS_PARAM_TOKEN": "s3cr3t-canary"})
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stdout + proc.stderr
    for host in ("web1", "web2"):
        assert not (demo.host_dir(host) / "token").exists()
        assert journal(demo, host) == ["undo-store"]
    rec = record(demo)
    assert all(h["changed"] for h in rec["steps"]["store"]["hosts"].values())
    assert "s3cr3t-canary" not in json.dumps(rec)


# ------------------------------------------------------------------- declared undo


def test_undo_none_and_undo_backup_count_as_undone(demo) -> None:  # type: ignore[no-untyped-def]
    for host in ("web1", "web2"):
        (demo.host_dir(host) / "app.conf").write_text("original\n")
    demo.write_runbook("declared", HEAD + step("keep", "paths: ['{{ state_dir }}/app.conf']", attrs="kind=backup")
                       + step("patch", """
- ansible.builtin.copy: {dest: "{{ state_dir }}/app.conf", content: "patched\\n"}
""", attrs="undo=backup:keep") + step("note", """
- ansible.builtin.copy: {dest: "{{ state_dir }}/note", content: "n\\n"}
""", attrs="undo=none") + step("boom", "- ansible.builtin.fail: {msg: planned}", attrs="kind=check"))
    lint = cli(demo, "lint", str(demo.root / "runbooks" / "declared.md"), "--strict")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    proc = cli(demo, "run", "declared", "--output", "json")
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stdout + proc.stderr  # not 4: nothing is left undone
    for host in ("web1", "web2"):
        assert (demo.host_dir(host) / "app.conf").read_text() == "original\n"  # the backup restored it
        assert (demo.host_dir(host) / "note").exists()  # undo=none: left as it is, by declaration
    rec = record(demo)
    assert rec["rollback"]["planned"] == ["keep"] and rec["rollback"]["failures"] == []
    assert any("undo=backup:keep" in n["message"] for n in rec["notices"])


def test_undo_backup_without_a_backup_on_a_host_needs_a_human(demo) -> None:  # type: ignore[no-untyped-def]
    (demo.host_dir("web1") / "app.conf").write_text("original\n")
    demo.write_runbook("half-covered", HEAD + step("keep", "paths: ['{{ state_dir }}/app.conf']",
                                                   attrs="kind=backup hosts=web1")  # web2 is not backed up
                       + step("patch", '- ansible.builtin.copy: {dest: "{{ state_dir }}/app.conf", content: "p\\n"}',
                              attrs="undo=backup:keep")
                       + step("boom", "- ansible.builtin.fail: {msg: planned}", attrs="kind=check"))
    proc = cli(demo, "run", "half-covered", "--output", "json")
    assert proc.returncode == ExitCode.ROLLBACK_FAILED, proc.stdout + proc.stderr
    assert (demo.host_dir("web1") / "app.conf").read_text() == "original\n"
    assert (demo.host_dir("web2") / "app.conf").read_text() == "p\n"  # left for the human the exit code calls
    failures = record(demo)["rollback"]["failures"]
    assert [(f["step"], f["host"]) for f in failures] == [("patch", "web2")]
    assert "nothing to restore" in failures[0]["error"]


# ------------------------------------------------------------------- stopping


def _slow_runbook(demo, seconds: int = 8) -> None:  # type: ignore[no-untyped-def]
    """Four steps; the second one sleeps ``seconds`` ignoring SIGTERM, so it is in flight when the test stops the run."""
    demo.write_runbook("slow", HEAD
                       + step("first", '- ansible.builtin.copy: {dest: "{{ state_dir }}/first", content: "1\\n"}')
                       + undo("first", '- ansible.builtin.file: {path: "{{ state_dir }}/first", state: absent}\n'
                              + log("undo-first"))
                       + step("slow", """
- ansible.builtin.shell: |
    touch "{{ state_dir }}/started"
    trap '' TERM
    sleep %d
    touch "{{ state_dir }}/finished"
""" % seconds) + undo("slow", '- ansible.builtin.file: {path: "{{ state_dir }}/started", state: absent}\n' + log("undo-slow"))
                       + step("third", '- ansible.builtin.copy: {dest: "{{ state_dir }}/third", content: "3\\n"}')
                       + undo("third", log("undo-third"))
                       + step("fourth", '- ansible.builtin.copy: {dest: "{{ state_dir }}/fourth", content: "4\\n"}')
                       + undo("fourth", log("undo-fourth")))


def _assert_later_steps_never_ran(demo) -> None:  # type: ignore[no-untyped-def]
    for host in ("web1", "web2"):
        for marker in ("finished", "third", "fourth"):
            assert not (demo.host_dir(host) / marker).exists(), f"{host}: {marker} ran after the stop"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_the_execution_then_undoes_what_it_may_have_changed(demo, sig: int) -> None:  # type: ignore[no-untyped-def]
    _slow_runbook(demo)
    proc = start(demo, "run", "slow")
    wait_for(demo.host_dir("web1") / "started")
    wait_for(demo.host_dir("web2") / "started")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    assert run_processes(demo) == []  # the in-flight task was stopped, not left to finish
    time.sleep(9)  # longer than the step's sleep: it never completes
    _assert_later_steps_never_ran(demo)
    for host in ("web1", "web2"):
        assert not (demo.host_dir(host) / "first").exists() and not (demo.host_dir(host) / "started").exists()
        assert journal(demo, host) == ["undo-slow", "undo-first"], host
    rec = record(demo)
    assert rec["outcome"] == "interrupted"
    assert {h["status"] for h in rec["steps"]["slow"]["hosts"].values()} == {"unknown"}
    assert rec["rollback"]["planned"] == ["slow", "first"] and rec["rollback"]["outcome"] == "rolled_back"


def test_the_runbook_timeout_stops_the_step_before_the_rollback(demo) -> None:  # type: ignore[no-untyped-def]
    # The timeout must fall inside the slow step on both hosts, however loaded the machine: 12 s for the
    # first step and the slow one's start, which then sleeps 30 s.  The shell that would write "finished"
    # is gone (run_processes), so it never can.
    _slow_runbook(demo, seconds=30)
    path = demo.root / "runbooks" / "slow.md"
    path.write_text(path.read_text().replace("hosts: web\n", "hosts: web\ntimeout: 12s\n", 1))
    proc = cli(demo, "run", "slow")
    assert proc.returncode == ExitCode.ROLLED_BACK, proc.stdout + proc.stderr
    assert run_processes(demo) == []
    time.sleep(2)
    _assert_later_steps_never_ran(demo)
    for host in ("web1", "web2"):
        assert journal(demo, host) == ["undo-slow", "undo-first"], host
    rec = record(demo)
    assert rec["failed_step"] == "slow"
    assert any("timeout" in n["message"] for n in rec["notices"])


def test_sigkill_of_technician_ops_stops_the_run_and_holds_the_lock_until_it_is_gone(demo) -> None:  # type: ignore[no-untyped-def]
    _slow_runbook(demo)
    proc = start(demo, "run", "slow")
    wait_for(demo.host_dir("web1") / "started")
    wait_for(demo.host_dir("web2") / "started")
    proc.kill()  # SIGKILL: nothing of technician-ops runs after this
    proc.wait(timeout=10)
    lock = demo.root / ".technician-ops" / "locks" / "slow.lock"
    # The step ignores SIGTERM, so its process lives through the supervisor's grace period:
    # all that time the lock must stay held, and a second run must be refused.
    # The lock first, then the processes: no process of the run starts once it is killed, so one seen
    # alive after the lock was seen free was alive while it was free.  (The other way round, a process
    # that died, and let the supervisor release the lock, between the two looks would fail the test.)
    saw_held = False
    deadline = time.monotonic() + 30
    while True:
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                free = False
        alive = run_processes(demo)
        assert not (free and alive), f"the lock was free while the run's processes lived: {alive}"
        if not free and alive and not saw_held:
            saw_held = True
            second = cli(demo, "run", "slow")
            assert second.returncode == ExitCode.TEMPFAIL, second.stdout + second.stderr
        if free and not alive:
            break
        assert time.monotonic() < deadline, "the run's processes outlived the supervisor's grace period"
        time.sleep(0.1)
    assert saw_held
    time.sleep(10)
    _assert_later_steps_never_ran(demo)
    killed = next(r for r in reversed(_records(demo)) if r["outcome"] == "interrupted")
    # recover undoes the steps the run's artifacts show as started, not only the recorded ones
    rec = cli(demo, "recover", killed["run_id"], "--yes", "--output", "json")
    assert rec.returncode == 0, rec.stdout + rec.stderr
    for host in ("web1", "web2"):
        assert not (demo.host_dir(host) / "first").exists() and not (demo.host_dir(host) / "started").exists()
        assert journal(demo, host) == ["undo-slow", "undo-first"], host


def _records(demo) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    proc = cli(demo, "audit", "export")
    return [json.loads(line) for line in proc.stdout.splitlines()]


# ------------------------------------------------------------------- rollback RUN_ID


def test_rollback_of_a_run_uses_the_inventory_it_ran_with(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-hosts"
    inv = tmp_path / "other-inventory.yml"
    (other / "w9").mkdir(parents=True)
    inv.write_text(f"all:\n  vars: {{ansible_connection: local}}\n  children:\n    web:\n      hosts:\n"
                   f"        w9: {{state_dir: {other / 'w9'}}}\n")
    demo.write_runbook("mark", HEAD + step("mark", '- ansible.builtin.copy: {dest: "{{ state_dir }}/mark", content: "m\\n"}')
                       + undo("mark", '- ansible.builtin.file: {path: "{{ state_dir }}/mark", state: absent}'))
    proc = cli(demo, "run", "mark", "-i", str(inv))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = record(demo)
    run_id = ran["run_id"]
    assert (other / "w9" / "mark").exists()
    assert [(i["path"], len(i["sha256"])) for i in ran["inventory"]] == [(str(inv), 64)]  # what an undo needs
    assert "[defaults]" in ran["ansible_cfg"] and "forks = " in ran["ansible_cfg"]

    # The inventory changed since: refused with the difference, nothing undone, the run not marked undone.
    original = inv.read_text()
    inv.write_text(original + "# edited\n")
    refused = cli(demo, "rollback", run_id, "--yes")
    assert refused.returncode == ExitCode.DATAERR, refused.stdout + refused.stderr
    assert "inventory" in refused.stderr and str(inv) in refused.stderr
    assert (other / "w9" / "mark").exists()

    inv.write_text(original)
    done = cli(demo, "rollback", run_id, "--yes")  # no -i: the record says which inventory
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (other / "w9" / "mark").exists()
    undo_rec = record(demo)
    assert undo_rec["rollback_of"] == run_id and undo_rec["outcome"] == "succeeded"
    assert list(undo_rec["rollback"]["steps"]["mark"]["hosts"]) == ["w9"]


# ------------------------------------------------------------------- --check and approvals


def test_check_mode_passes_approve_steps_without_asking(demo) -> None:  # type: ignore[no-untyped-def]
    proc = cli(demo, "run", "restart-with-approval", "-p", "reason=dry", "--check", "--output", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    approvals = [json.loads(line) for line in proc.stdout.splitlines() if '"approval"' in line]
    assert [(a["approved"], a["by"]) for a in approvals] == [(True, "--check")]
    assert not (demo.host_dir("db1") / "restarted-at").exists()
    refused = cli(demo, "run", "restart-with-approval", "-p", "reason=real")  # a real run still needs one
    assert refused.returncode == ExitCode.APPROVAL_MISSING


def test_an_undo_that_matches_no_host_is_a_failure_never_a_success(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("nowhere", HEAD + step("mark", '- ansible.builtin.copy: {dest: "{{ state_dir }}/mark", content: "m\\n"}')
                       + "```yaml {rollback=mark hosts=no-such-host}\n- ansible.builtin.file: {path: /tmp/x, state: absent}\n```\n\n"
                       + step("boom", "- ansible.builtin.fail: {msg: planned}", attrs="kind=check"))
    proc = cli(demo, "run", "nowhere")
    assert proc.returncode == ExitCode.ROLLBACK_FAILED, proc.stdout + proc.stderr
    failures = record(demo)["rollback"]["failures"]
    assert [f["step"] for f in failures] == ["mark"]
    assert failures[0]["error"] in ("undo matched no host", "undo did not run")
