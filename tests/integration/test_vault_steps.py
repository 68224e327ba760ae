"""The ``vault`` step end to end: real OpenBao, real PostgreSQL 15, real ansible-runner.

Each test runs the bundled ``rotate-db-password`` runbook (with its secret
path made unique) through :func:`technician_ops.api.run` against a role and
database of its own, then checks three things against the real services:
what OpenBao holds (versions and values), which password PostgreSQL accepts,
and what the event stream recorded.  Every test also searches every file the
run wrote, and the console output, for the values involved.

A sink can act at a chosen event (``hooks``): that is how a test plays the
other writer that races the rotation, or the operator who fixes a cause
before the undo runs.  Sinks are called synchronously in the technician-ops
process, so the effect is in place before the run goes on.
"""

from __future__ import annotations

import io
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from technician_ops import api
from technician_ops.outputs.console import JsonView
from technician_ops.errors import ExitCode
from technician_ops.events import Event, Kind, Outcome
from tests.conftest import DemoProject
from tests.integration.conftest import Postgres
from tests.support.openbao import OpenBaoServer

RUNBOOK = "rotate-db-password"
STEP = "rotate-password"
ORIGINAL_REF = "vault:secret/app/db#password"
FAILING_LATER_STEP = """
```sh {name=later-step-fails kind=check}
echo "the service did not come back" >&2
exit 1
```
"""


@dataclass
class Case:
    """One test's role, database and secret, and what its runs printed."""

    pg: Postgres
    bao: OpenBaoServer
    demo: DemoProject
    role: str
    database: str
    secret_path: str  # below the secret/ mount
    old: str
    console: list[str] = field(default_factory=list)

    # -- arranging -------------------------------------------------------

    def write_runbook(self, extra: str = "") -> None:
        text = (Path(__file__).resolve().parents[2] / "runbooks" / f"{RUNBOOK}.md").read_text()
        assert ORIGINAL_REF in text
        text = text.replace(ORIGINAL_REF, f"vault:secret/{self.secret_path}#password")
        self.demo.write_runbook(RUNBOOK, text + extra)

    # -- acting ----------------------------------------------------------

    def run(self, *, check: bool = False, hooks: dict[str, Callable[[Event], None]] | None = None) -> tuple[api.RunResult, list[dict[str, Any]]]:
        run_id = "vt-" + secrets.token_hex(6)
        stream = io.StringIO()
        sinks: list[Any] = [JsonView(run_id, stream=stream)]
        if hooks:
            sinks.append(_Hooks(hooks))
        params = {"role": self.role, "pg_host": self.pg.host, "pg_port": str(self.pg.port),
                  "pg_admin_user": self.pg.admin, "pg_database": self.database}
        request = api.RunRequest(runbook=RUNBOOK, params=params, check=check, yes=True, run_id=run_id,
                                 environ={}, skip_preflight=True)
        result = api.run(request, self.demo.project(), sinks)
        text = stream.getvalue()
        self.console.append(text)
        return result, [json.loads(line) for line in text.splitlines()]

    # -- looking ---------------------------------------------------------

    def version(self) -> int:
        meta = self.bao.client().secrets.kv.v2.read_secret_metadata(path=self.secret_path, mount_point="secret")
        return int(meta["data"]["current_version"])

    def value(self, version: int | None = None) -> str:
        resp = self.bao.client().secrets.kv.v2.read_secret_version(
            path=self.secret_path, mount_point="secret", version=version, raise_on_deleted_version=True)
        return str(resp["data"]["data"]["password"])

    def login(self, password: str, database: str | None = None) -> bool:
        return self.pg.can_login(self.role, password, database or self.database)

    def assert_nowhere(self, *values: str) -> None:
        """No file under the project (state dir, runner artifacts included), no console line, no server log line."""
        needles = [v.encode() for v in values]
        files = [p for p in self.demo.root.rglob("*") if p.is_file()]
        assert any(".technician-ops" in p.parts for p in files), "the run wrote no files: the search proves nothing"
        for path in [*files, self.pg.log]:
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"a secret value was written to {path}"
        for text in self.console:
            for value in values:
                assert value not in text, "a secret value reached the console output"


class _Hooks:
    """A sink that calls ``hooks[name]`` at the matching event (name: event kind, or ``artifact:<type>``)."""

    def __init__(self, hooks: dict[str, Callable[[Event], None]]) -> None:
        self.hooks = hooks

    def handle(self, event: Event) -> None:
        names = [event.kind.value]
        if event.kind is Kind.ARTIFACT:
            names.append(f"artifact:{event.data.get('type')}")
        for name in names:
            if name in self.hooks:
                self.hooks[name](event)


def artifacts(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "artifact" and e.get("type") == type_]


@pytest.fixture
def case(pg: Postgres, bao_server: OpenBaoServer, demo: DemoProject, monkeypatch: pytest.MonkeyPatch) -> Case:
    """A role with a password kept in OpenBao as version 1, and a database it may log in to."""
    suffix = secrets.token_hex(4)
    role, database = f"app_{suffix}", f"db_{suffix}"
    old = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
    pg.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{old}'")
    pg.sql(f"CREATE DATABASE {database}")
    c = Case(pg, bao_server, demo, role, database, f"tests/vault-steps/{suffix}", old)
    bao_server.client().secrets.kv.v2.create_or_update_secret(
        path=c.secret_path, mount_point="secret", secret={"username": role, "password": old})
    assert c.version() == 1 and c.login(old)
    # ansible-runner hands this process's environment to ansible, so the
    # plugins find the server the way an operator's shell would.
    for name, value in bao_server.env.items():
        monkeypatch.setenv(name, value)
    c.write_runbook()
    return c


# ------------------------------------------------------------------- (a)


def test_rotation_publishes_a_new_password_the_database_accepts(case: Case) -> None:
    result, events = case.run()

    assert result.outcome is Outcome.SUCCEEDED, events
    assert case.version() == 2
    new = case.value()
    assert new != case.old and re.fullmatch(r"[A-Za-z0-9]{32}", new)
    # A client that reads the secret from OpenBao logs in with it; the old one no longer works.
    assert case.login(new)
    assert not case.login(case.old)
    # Other keys of the secret are carried over.
    assert case.bao.client().secrets.kv.v2.read_secret_version(
        path=case.secret_path, mount_point="secret", raise_on_deleted_version=True)["data"]["data"]["username"] == case.role
    intent, = artifacts(events, "secret_intent")
    assert intent["from_version"] == 1 and intent["step"] == STEP
    version, = artifacts(events, "secret_version")
    assert (version["path"], version["key"], version["old_version"], version["new_version"]) == (
        f"secret/{case.secret_path}", "password", 1, 2)
    # The intent is recorded before the version it announces.
    assert events.index(intent) < events.index(version)
    state = json.loads((case.demo.root / ".technician-ops" / "runs" / result.run_id / f"vault-{STEP}.json").read_text())
    assert (state["status"], state["old_version"], state["new_version"]) == ("rotated", 1, 2)
    case.assert_nowhere(new, case.old, case.bao.token)  # nor the token the plugins used (issue 18)


# ------------------------------------------------------------------- (b)


def test_failed_verify_restores_the_old_password_as_a_newer_version(case: Case) -> None:
    case.pg.sql(f"REVOKE CONNECT ON DATABASE {case.database} FROM PUBLIC")
    # The operator's fix for the cause, in place before the undo re-verifies.
    hooks = {"rollback_start": lambda _e: case.pg.sql(f"GRANT CONNECT ON DATABASE {case.database} TO PUBLIC")}

    result, events = case.run(hooks=hooks)

    assert result.outcome is Outcome.ROLLED_BACK, events
    assert result.failed_step == STEP
    assert case.version() == 3
    new = case.value(2)
    assert case.value() == case.old and new != case.old
    assert case.login(case.old)
    assert not case.login(new)
    published, rolled = artifacts(events, "secret_version")
    assert (published["old_version"], published["new_version"]) == (1, 2)
    assert (rolled["rollback_version"], rolled["restored_version"], rolled["replaced_version"]) == (3, 1, 2)
    end, = [e for e in events if e["event"] == "rollback_end"]
    assert end["outcome"] == "rolled_back" and end["steps"] == [STEP]
    case.assert_nowhere(new, case.old)


def test_undo_whose_verify_still_fails_is_rollback_failed_with_the_secret_restored(case: Case) -> None:
    case.pg.sql(f"REVOKE CONNECT ON DATABASE {case.database} FROM PUBLIC")

    result, events = case.run()

    assert result.outcome is Outcome.ROLLBACK_FAILED, events
    # Vault and the role agree again on the old value; only the check could not prove it.
    assert case.version() == 3 and case.value() == case.old
    assert case.login(case.old, database="postgres")
    assert not case.login(case.value(2), database="postgres")
    end, = [e for e in events if e["event"] == "rollback_end"]
    assert [f["step"] for f in end["failures"]] == [STEP]
    case.assert_nowhere(case.value(2), case.old)


# ------------------------------------------------------------------- (c)


def test_a_later_failing_step_undoes_the_rotation(case: Case) -> None:
    case.write_runbook(FAILING_LATER_STEP)

    result, events = case.run()

    assert result.outcome is Outcome.ROLLED_BACK, events
    assert result.failed_step == "later-step-fails"
    assert result.steps[STEP] == "succeeded"
    assert case.version() == 3 and case.value() == case.old
    assert case.login(case.old) and not case.login(case.value(2))
    rolled = artifacts(events, "secret_version")[-1]
    assert (rolled["rollback_version"], rolled["restored_version"]) == (3, 1)
    case.assert_nowhere(case.value(2), case.old)


def test_a_destroyed_rollback_target_fails_the_rollback_loudly(case: Case) -> None:
    case.write_runbook(FAILING_LATER_STEP)
    destroy = lambda _e: case.bao.client().secrets.kv.v2.destroy_secret_versions(  # noqa: E731
        path=case.secret_path, versions=[1], mount_point="secret")

    result, events = case.run(hooks={"rollback_start": destroy})

    assert result.outcome is Outcome.ROLLBACK_FAILED, events
    assert case.version() == 2  # nothing was written over the new value
    assert case.login(case.value(2))
    end, = [e for e in events if e["event"] == "rollback_end"]
    failure, = end["failures"]
    assert failure["step"] == STEP and "destroyed" in failure["error"]
    case.assert_nowhere(case.value(2), case.old)


# ------------------------------------------------------------------- (d)


def test_a_concurrent_writer_makes_the_step_fail_with_nothing_published(case: Case) -> None:
    theirs = "other-writer-" + secrets.token_hex(8)

    def race(_e: Event) -> None:  # between our version read and our write
        case.bao.client().secrets.kv.v2.create_or_update_secret(
            path=case.secret_path, mount_point="secret", secret={"username": case.role, "password": theirs})

    result, events = case.run(hooks={"artifact:secret_intent": race})

    assert result.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK), events
    assert result.failed_step == STEP
    assert case.version() == 2 and case.value() == theirs  # their version, untouched
    assert artifacts(events, "secret_version") == []
    assert case.login(case.old)  # the database was never touched
    failed = [e for e in events if e["event"] == "host_result" and e["status"] == "failed"]
    assert failed and "nothing was written" in failed[0]["error"]
    case.assert_nowhere(case.old)


# ------------------------------------------------------------------- (e)


def test_an_unreachable_openbao_fails_the_run_before_the_database_is_touched(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stopped-bao").mkdir()
    stopped = OpenBaoServer.dev(tmp_path / "stopped-bao").start()
    stopped.stop()
    monkeypatch.setenv("VAULT_ADDR", stopped.addr)

    result, events = case.run()

    assert result.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK), events
    assert result.exit_code == ExitCode.TEMPFAIL  # a dependency down: what changed is undone, retry later
    assert result.failed_step == STEP
    failed = [e for e in events if e["event"] == "host_result" and e["status"] == "failed"]
    assert failed and "unreachable" in failed[0]["error"] and stopped.addr in failed[0]["error"]
    ran = [e["task"] for e in events if e["event"] == "task_start" and e.get("phase") == "run"]
    assert not any("role's password" in t for t in ran), ran
    assert case.login(case.old) and case.version() == 1


# ------------------------------------------------------------------ --check


def test_check_mode_is_a_dry_run(case: Case) -> None:
    result, events = case.run(check=True)

    assert result.outcome is Outcome.SUCCEEDED, events
    assert case.version() == 1 and case.login(case.old)
    dry, = artifacts(events, "secret_version")
    assert dry["dry_run"] is True and (dry["old_version"], dry["new_version"]) == (1, 2)
