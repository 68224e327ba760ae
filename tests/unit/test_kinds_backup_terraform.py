"""Fast tests of the backup and terraform step kinds: body validation, what they
compile to, retention, and the terraform apply history used by ``rollback: previous``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from technician_ops.steps.backup import controller as backup_steps
from technician_ops import steps as kinds
from technician_ops.steps.terraform import controller as terraform_steps
from technician_ops.steps.backup.store import BackupCorrupted
from technician_ops.plan.compiler import build_plan
from technician_ops.steps.base import BodyError, CompileContext
from technician_ops.plan.loader import load_runbook
from technician_ops.runbook.model import Step
from technician_ops.steps.terraform.client import remember_apply

REPO = Path(__file__).resolve().parents[2]

BAD_BODIES: list[tuple[str, str, str]] = [
    ("backup", "", "either 'paths: [...]' or 'postgres"),
    ("backup", "paths: [/a]\npostgres: {database: x}\n", "either 'paths: [...]' or 'postgres"),
    ("backup", "paths: []\n", "non-empty list"),
    ("backup", "paths: [relative/dir]\n", "must be absolute"),
    ("backup", "postgres: {host: x}\n", "at least 'database'"),
    ("backup", "postgres: {database: app, password: hunter2}\n", "passwords never go in a runbook"),
    ("terraform", "vars: {}\n", "'module: DIR'"),
    ("terraform", "module: terraform/nope\n", "not found"),
    ("terraform", "module: ../..\n", "outside the project"),
    ("terraform", "module: terraform/app\naction: nuke\n", "must be one of apply, plan, destroy"),
    ("terraform", "module: terraform/app\nrollback: latest\n", "can only be 'previous'"),
    ("terraform", "module: terraform/app\nvars: [1]\n", "must be a mapping"),
    ("terraform", "module: terraform/app\nworkdir: x\n", "unknown key(s) in terraform step: workdir"),
]


@pytest.mark.parametrize(("kind", "body", "message"), BAD_BODIES)
def test_bad_bodies_are_refused(kind: str, body: str, message: str) -> None:
    with pytest.raises(BodyError) as info:
        kinds.registry()[kind].parse(body, "yaml", REPO)
    assert message in info.value.message


def test_example_runbooks_are_valid_without_warnings() -> None:
    for name in ("patch-web", "terraform-demo"):
        runbook = load_runbook(REPO / "runbooks" / f"{name}.md", REPO, strict=True)
        assert not runbook.warnings


def _plays(name: str, params: dict[str, Any], **kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    runbook = load_runbook(REPO / "runbooks" / f"{name}.md", REPO)
    plan = build_plan(runbook, REPO, params, run_id="r1", state_dir=Path("/state"), **kw)
    return plan, plan.playbook()


def _tasks(play: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for task in play["tasks"]:
        out.append(task)
        for key in ("block", "rescue", "always"):
            out.extend(_tasks({"tasks": task.get(key) or []}))
    return out


def test_backup_compiles_to_archive_fetch_record_and_restore_undo() -> None:
    plan, plays = _plays("patch-web", {"healthy": False})
    play = next(p for p in plays if p["name"] == "backup-config")
    modules = [next(k for k in t if k.startswith(("ansible.", "technician_ops_")) or k == "block") for t in _tasks(play)]
    assert "ansible.builtin.fetch" in modules and "technician_ops_backup_record" in modules
    create = next(t for t in _tasks(play) if "ansible.builtin.command" in t)
    assert create["ansible.builtin.command"]["argv"][2:5] == ["create", "--out", "{{ technician_ops_backup_tmp.path }}/archive.tar"]
    assert create["ansible.builtin.command"]["argv"][5:] == ["{{ state_dir }}/conf"]
    ps = next(p for p in plan.steps if p.name == "backup-config")
    undo = plan.rollback_playbook([(ps, ["web1"])])
    assert undo[0]["hosts"] == "web1"
    undo_tasks = _tasks(undo[0])
    restore = next(t for t in undo_tasks if "ansible.builtin.command" in t)
    assert restore["ansible.builtin.command"]["argv"][2] == "restore"
    assert any("technician_ops_backup_restore" in t for t in undo_tasks)


def test_backup_takes_nothing_in_check_mode() -> None:
    _, plays = _plays("patch-web", {"healthy": False}, check=True)
    play = next(p for p in plays if p["name"] == "backup-config")
    assert all("ansible.builtin.debug" in t for t in play["tasks"][0]["block"])


def test_terraform_compiles_to_one_controller_task_with_templated_vars() -> None:
    plan, plays = _plays("terraform-demo", {"version": "7", "healthy": False})
    play = next(p for p in plays if p["name"] == "roll-out")
    assert play["hosts"] == "localhost"
    (task,) = play["tasks"][0]["block"]
    args = task["technician_ops_terraform"]
    assert args["vars"] == {"app_version": "{{ version }}"}
    assert args["module"] == "terraform/app" and Path(args["module_dir"]) == REPO / "terraform" / "app"
    ps = next(p for p in plan.steps if p.name == "roll-out")
    (undo,) = plan.rollback_playbook([(ps, ["localhost"])])
    assert undo["tasks"][0]["block"][0]["technician_ops_terraform"]["undo"] is True


def test_terraform_without_rollback_previous_has_a_failing_undo() -> None:
    kind = kinds.registry()["terraform"]
    spec = kind.parse("module: terraform/app\n", "yaml", REPO)
    step = Step("tf", "terraform", "yaml", {}, "", 1, 2, spec)
    ctx = CompileContext(None, REPO, {}, set())  # type: ignore[arg-type]
    (task,) = kind.undo_tasks(step, ctx)
    assert "has no undo" in task["ansible.builtin.fail"]["msg"]


def test_run_history_and_forget_apply(tmp_path: Path) -> None:
    path = terraform_steps.history_path(tmp_path)
    key = "terraform/app@default"
    assert terraform_steps.run_history(tmp_path, key, "r1") == (False, None, None)
    remember_apply(path, key, {"v": 1}, "r0")
    remember_apply(path, key, {"v": 2}, "r1")
    assert terraform_steps.run_history(tmp_path, key, "r1") == (True, {"v": 1}, {"v": 2})
    assert terraform_steps.run_history(tmp_path, key, "r2") == (False, {"v": 2}, None)
    terraform_steps.forget_apply(tmp_path, key, "r1")
    entries = json.loads(path.read_text())["modules"][key]
    assert [e["run_id"] for e in entries] == ["r0"]
    assert terraform_steps.run_history(tmp_path, key, "r0") == (True, None, {"v": 1})


def test_prune_backups_keeps_the_newest_runs_of_one_runbook(tmp_path: Path) -> None:
    store = backup_steps.store_for(tmp_path)
    for i, (run_id, runbook) in enumerate([("a", "patch-web"), ("b", "other"), ("c", "patch-web"), ("d", "patch-web")]):
        path = store.path_for(run_id, "web1", "s.tar")
        path.write_bytes(run_id.encode())
        store.record(run_id, "web1", "s.tar", runbook=runbook, kind="files")
        index = store.run_dir(run_id) / "index.json"
        data = json.loads(index.read_text())
        data["created_at"] = 1000 + i  # deterministic order
        index.write_text(json.dumps(data))
    assert backup_steps.prune_backups(tmp_path, "patch-web", 2) == ["a"]
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == ["b", "c", "d"]


def test_stored_refuses_a_changed_artefact(tmp_path: Path) -> None:
    path = backup_steps.prepare_destination(tmp_path, "r1", "web1", "cfg")
    path.write_bytes(b"archive bytes")
    backup_steps.record_files(tmp_path, "r1", "web1", "cfg", runbook="rb", sha256=hashlib.sha256(b"archive bytes").hexdigest())
    assert backup_steps.stored(tmp_path, "r1", "web1", "cfg", "files").path == str(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    path.write_bytes(b"archive bytez")
    with pytest.raises(BackupCorrupted, match="corrupted"):
        backup_steps.stored(tmp_path, "r1", "web1", "cfg", "files")
