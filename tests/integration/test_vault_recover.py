"""A vault run killed between publish and finish is recovered; a token without permission is refused first.

Real OpenBao (dev server), real PostgreSQL 15, real ansible-runner: the
``rotate-db-password`` runbook runs as ``technician-ops run --output json``
in a subprocess (its own process group) that is SIGKILLed the moment the
``secret_version`` artifact line appears -- the secret is published, the run
never finishes.  ``recover RUN_ID`` must then leave OpenBao holding the old
value as a newer version and PostgreSQL accepting the old password.

Two variants rewrite the killed run's state file to what a kill one
instruction earlier would have left (status ``intent``: the process died
between the check-and-set write and recording it), once with Vault past the
intent's version (the write happened: undone) and once at it (the write
never happened: marked ``not_written``, nothing touched).  That part is
constructed, not raced: killing exactly between two lines of Python is not
reproducible.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from technician_ops import api
from technician_ops import api as past_runs
from technician_ops.audit import open_store
from technician_ops.events import Outcome
from technician_ops.steps.vault.client import VaultPermissionError
from tests.integration.test_vault_steps import RUNBOOK, STEP, Case, case  # noqa: F401 - case is a fixture

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def kill_after_publish(case: Case) -> str:
    """Run the runbook through the CLI; SIGKILL its process group at the secret_version event."""
    env = {**os.environ, **case.bao.env, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "technician_ops.cli", "--project", str(case.demo.root), "run", RUNBOOK, "--yes",
           "--skip-preflight", "--output", "json", "-p", f"role={case.role}", "-p", f"pg_host={case.pg.host}",
           "-p", f"pg_port={case.pg.port}", "-p", f"pg_admin_user={case.pg.admin}", "-p", f"pg_database={case.database}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env, start_new_session=True)
    run_id = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            event = json.loads(line)
            run_id = event["run_id"]
            if event["event"] == "artifact" and event.get("type") == "secret_version":
                os.killpg(proc.pid, signal.SIGKILL)
                break
        else:
            pytest.fail(f"the run ended without publishing: {proc.stderr.read() if proc.stderr else ''}")
    finally:
        proc.wait(timeout=30)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # ansible-playbook too, if it outlived the leader
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL and run_id is not None
    return run_id


def state_path(case: Case, run_id: str) -> Path:
    return case.demo.root / ".technician-ops" / "runs" / run_id / f"vault-{STEP}.json"


def recover(case: Case, run_id: str) -> tuple[api.RunResult, dict[str, Any]]:
    with open_store(None, case.demo.root) as store:  # opening reaps the killed writer's run: interrupted
        assert store.get(run_id)["outcome"] == "interrupted"
        result = past_runs.recover_run(case.demo.project(), run_id, yes=True, audit=store, skip_preflight=True)
        return result, store.get(result.run_id)


@pytest.mark.parametrize("left", ["rotated", "intent-written", "intent-not-written"])
def test_a_run_killed_after_publishing_is_recovered(case: Case, left: str) -> None:
    run_id = kill_after_publish(case)
    assert case.version() == 2
    new = case.value(2)
    path = state_path(case, run_id)
    state = json.loads(path.read_text())
    assert state["status"] == "rotated" and (state["old_version"], state["new_version"]) == (1, 2)
    if left == "intent-written":  # died after the CAS write, before recording it
        path.write_text(json.dumps({**state, "status": "intent", "new_version": None, "key_existed": None}))
    elif left == "intent-not-written":  # intent recorded at the version Vault is still at
        path.write_text(json.dumps({**state, "status": "intent", "old_version": 2, "new_version": None}))

    result, rec = recover(case, run_id)

    assert result.outcome is Outcome.SUCCEEDED, rec
    assert rec["rollback_of"] == run_id and rec["action"] == "recover"
    decision, = rec["artifacts"]["secret_recovery"]
    after = json.loads(path.read_text())
    if left == "intent-not-written":
        assert (decision["found"], decision["set"], decision["then"]) == ("intent", "not_written", "nothing")
        assert after["status"] == "not_written" and case.version() == 2  # nothing written, no host touched
        assert rec["rollback"] is None or rec["rollback"]["planned"] == []
        return
    assert decision["then"] == "undo"
    if left == "intent-written":
        assert decision["set"] == "rotated" and decision["current_version"] == 2 and "version number" in decision["attribution"]
    assert rec["rollback"]["planned"] == [STEP] and rec["rollback"]["outcome"] == "rolled_back"
    assert after["status"] == "rolled_back" and after["rollback_version"] == 3
    assert case.version() == 3 and case.value() == case.old  # the old value, as a newer version
    assert case.login(case.old) and not case.login(new)  # re-applied on the database too
    case.assert_nowhere(new, case.old)
    with pytest.raises(past_runs.PastRunError, match="already undone"):
        recover(case, run_id)


def test_recover_refuses_a_run_that_was_not_interrupted(case: Case) -> None:
    with open_store(None, case.demo.root) as store:
        result = api.run(api.RunRequest(RUNBOOK, {"role": case.role, "pg_host": case.pg.host, "pg_port": str(case.pg.port),
                                                  "pg_admin_user": case.pg.admin, "pg_database": case.database},
                                        yes=True, environ={}, skip_preflight=True), case.demo.project(), [], audit=store)
        assert result.outcome is Outcome.SUCCEEDED
        with pytest.raises(past_runs.PastRunError, match="not interrupted"):
            past_runs.recover_run(case.demo.project(), result.run_id, yes=True, audit=store, skip_preflight=True)
    assert case.version() == 2


def test_a_token_without_permission_fails_the_run_before_any_step(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = f'path "secret/data/{case.secret_path}" {{ capabilities = ["read"] }}\n' \
             f'path "secret/metadata/{case.secret_path}" {{ capabilities = ["read"] }}\n'
    root = case.bao.client()
    root.sys.create_or_update_policy(name="read-only-test", policy=policy)
    token = root.auth.token.create(policies=["read-only-test"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.setenv("BAO_TOKEN", token)
    marker = case.demo.host_dir("db1") / "touched"
    text = (REPO / "runbooks" / f"{RUNBOOK}.md").read_text().replace("vault:secret/app/db#password",
                                                                     f"vault:secret/{case.secret_path}#password")
    first_step = f'```sh {{name=touch-host}}\ntouch "{marker}"\n```\n\n```sh {{rollback=touch-host}}\nrm -f "{marker}"\n```\n\n'
    case.demo.write_runbook(RUNBOOK, text.replace("```yaml {name=rotate-password kind=vault}",
                                                  first_step + "```yaml {name=rotate-password kind=vault}"))

    with open_store(None, case.demo.root) as store:
        with pytest.raises(VaultPermissionError) as info:
            api.run(api.RunRequest(RUNBOOK, {"role": case.role}, yes=True, environ={}, skip_preflight=True),
                    case.demo.project(), [], audit=store)
        refused, = store.history(RUNBOOK)
        rec = store.get(refused["run_id"])

    assert info.value.path == f"secret/data/{case.secret_path}" and info.value.missing == ("create", "update")
    assert f"secret/data/{case.secret_path}" in info.value.message and "'create'" in info.value.message
    assert rec["outcome"] == "refused" and rec["steps"] == {} and "lacks" in rec["reason"]
    assert not marker.exists()  # the host step before the vault step never ran
    assert case.version() == 1 and case.login(case.old)
