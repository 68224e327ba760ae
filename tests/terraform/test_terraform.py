"""Integration tests of technician_ops.steps.terraform.client against the real terraform binary.

Offline: the fixture modules use only the built-in ``terraform_data``
resource and the built-in ``local-exec`` provisioner, so ``terraform init``
downloads nothing.  Each test copies its module into tmp_path, so no
``.terraform/`` or state ever lands in the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from technician_ops.errors import ExitCode, NotFound, TechnicianOpsError
from technician_ops.steps.terraform.client import (
    TerraformError,
    TerraformLocked,
    TerraformModule,
    filtered_env,
    previous_apply,
    remember_apply,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform binary not on PATH"),
]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tf"


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


def _state_file(module_dir: Path, workspace: str | None) -> Path:
    if workspace:
        return module_dir / "terraform.tfstate.d" / workspace / "terraform.tfstate"
    return module_dir / "terraform.tfstate"


@pytest.fixture
def basic(tmp_path: Path) -> TerraformModule:
    mod = TerraformModule(_copy("basic", tmp_path), workspace="blue", lock_timeout="1s")
    mod.init()
    return mod


def test_plan_apply_change_and_rollback_previous(basic: TerraformModule, tmp_path: Path) -> None:
    history = tmp_path / "state" / "terraform-applies.json"
    key = "basic@blue"

    plan1 = basic.plan({"app_version": "1.0"}, out=tmp_path / "plans" / "1.tfplan")
    assert plan1.has_changes
    assert plan1.adds == ["terraform_data.app"]
    assert plan1.changes == [] and plan1.destroys == []
    # The sensitive variable is named, never carried as a value.
    assert plan1.variables == {"app_version": "1.0"}
    assert plan1.sensitive_variables == ["api_key"]
    assert "fixture-not-a-secret" not in repr(plan1.to_record())
    assert oct(plan1.plan_file.stat().st_mode & 0o777) == "0o600"

    assert previous_apply(history, key) is None  # undo data read before applying
    res1 = basic.apply(plan1)
    assert res1.outputs == {"version": "1.0"}
    remember_apply(history, key, plan1.variables, run_id="run-1")
    assert oct(history.stat().st_mode & 0o777) == "0o600"

    # The workspace is real: the state lives in terraform.tfstate.d/blue.
    assert _state_file(basic.dir, "blue").exists()
    assert not _state_file(basic.dir, None).exists()

    # A second run changes the variable: the summary is a change, in place.
    undo_vars = previous_apply(history, key)
    assert undo_vars == {"app_version": "1.0"}
    plan2 = basic.plan({"app_version": "2.0"}, out=tmp_path / "plans" / "2.tfplan")
    assert plan2.changes == ["terraform_data.app"]
    assert plan2.adds == [] and plan2.destroys == []
    assert basic.apply(plan2).outputs == {"version": "2.0"}
    remember_apply(history, key, plan2.variables, run_id="run-2")
    assert basic.outputs() == {"version": "2.0"}

    # rollback: previous -> re-apply the variables recorded before run-2 applied.
    assert undo_vars is not None
    back = basic.plan(undo_vars, out=tmp_path / "plans" / "undo.tfplan")
    assert back.changes == ["terraform_data.app"]
    assert basic.apply(back).outputs == {"version": "1.0"}
    assert basic.outputs() == {"version": "1.0"}

    # Re-planning the same variables is a no-op (rc 0 of -detailed-exitcode).
    same = basic.plan({"app_version": "1.0"}, out=tmp_path / "plans" / "same.tfplan")
    assert not same.has_changes


def test_plan_only_leaves_state_untouched(basic: TerraformModule, tmp_path: Path) -> None:
    basic.apply(basic.plan({"app_version": "1.0"}, out=tmp_path / "a.tfplan"))
    state = _state_file(basic.dir, "blue")
    before = state.read_bytes()
    mtime = state.stat().st_mtime_ns

    plan = basic.plan({"app_version": "9.9"}, out=tmp_path / "check.tfplan")  # what --check does
    assert plan.changes == ["terraform_data.app"]
    assert plan.outputs_after == {}  # unknown until apply: terraform_data.output is computed
    assert state.read_bytes() == before
    assert state.stat().st_mtime_ns == mtime
    assert basic.outputs() == {"version": "1.0"}


def test_destroy_is_plan_destroy_plus_apply(basic: TerraformModule, tmp_path: Path) -> None:
    basic.apply(basic.plan({"app_version": "1.0"}, out=tmp_path / "a.tfplan"))
    result = basic.destroy({"app_version": "1.0"}, out=tmp_path / "d.tfplan")
    assert result.plan.destroy
    assert result.plan.destroys == ["terraform_data.app"]
    assert result.plan.adds == []
    assert basic.outputs() == {}
    listing = subprocess.run(
        ["terraform", "state", "list"],
        cwd=basic.dir,
        env=filtered_env(extra={"TF_WORKSPACE": "blue"}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert listing.stdout.strip() == ""


def test_failed_command_reports_command_rc_and_stderr(basic: TerraformModule, tmp_path: Path) -> None:
    with pytest.raises(TerraformError) as info:
        basic.plan({}, out=tmp_path / "bad.tfplan")  # required variable missing
    err = info.value
    assert isinstance(err, TechnicianOpsError)
    assert err.returncode == 1
    assert err.command[0] == "terraform" and "plan" in err.command
    assert "app_version" in str(err)
    assert "No value for required variable" in err.stderr_tail
    assert "-detailed-exitcode" in err.command


def test_missing_module_dir(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        TerraformModule(tmp_path / "nope")


def test_state_lock_held_by_another_terraform_is_retryable(tmp_path: Path) -> None:
    module_dir = _copy("slow", tmp_path)
    mod = TerraformModule(module_dir, lock_timeout="1s")
    mod.init()
    # Our plan is saved before the other apply starts, so both plan and apply
    # of the saved plan meet the lock.
    saved = mod.plan({"seconds": 0}, out=tmp_path / "ours.tfplan")

    lock_info = module_dir / ".terraform.tfstate.lock.info"
    other = subprocess.Popen(
        ["terraform", "apply", "-auto-approve", "-input=false", "-no-color", "-var", "seconds=8"],
        cwd=module_dir,
        env=filtered_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not lock_info.exists():
            assert other.poll() is None, "the lock-holding terraform exited early"
            assert time.monotonic() < deadline, "the other terraform never took the lock"
            time.sleep(0.05)

        with pytest.raises(TerraformLocked) as info:
            mod.apply(saved)
        err = info.value
        assert err.exit_code == ExitCode.TEMPFAIL
        assert "locked by another operation" in str(err)
        assert "lock ID" in str(err)
        assert err.hint and "retry" in err.hint

        with pytest.raises(TerraformLocked):
            mod.plan({"seconds": 1}, out=tmp_path / "again.tfplan")
    finally:
        other.terminate()  # SIGTERM: terraform stops gracefully and unlocks
        other.wait(timeout=30)


def test_filtered_env_reaches_terraform_children_without_our_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-must-not-leak")
    monkeypatch.setenv("BAO_TOKEN", "bao-token-must-not-leak")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFIXTURE")  # provider creds stay
    monkeypatch.setenv("TF_VAR_unused", "kept")
    monkeypatch.setenv("TF_LOG", "trace")

    module_dir = _copy("envdump", tmp_path)
    dump = tmp_path / "env.txt"
    mod = TerraformModule(module_dir, lock_timeout="1s", env=filtered_env(extra={"EXPLICIT_FOR_MODULE": "yes"}))
    mod.init()
    mod.apply(mod.plan({"out": str(dump)}, out=tmp_path / "e.tfplan"))

    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert "VAULT_TOKEN" not in seen
    assert "BAO_TOKEN" not in seen
    assert "TF_LOG" not in seen
    assert "must-not-leak" not in dump.read_text()
    assert seen["AWS_ACCESS_KEY_ID"] == "AKIAFIXTURE"
    assert seen["TF_VAR_unused"] == "kept"
    assert seen["EXPLICIT_FOR_MODULE"] == "yes"
    assert seen["TF_IN_AUTOMATION"] == "1"
    assert seen["PATH"] == os.environ["PATH"]


def test_filtered_env_lists() -> None:
    env = filtered_env(
        {
            "PATH": "/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "HTTPS_PROXY": "http://proxy:3128",
            "VAULT_TOKEN": "x",
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "TECHNICIAN_OPS_AUDIT_URL": "postgresql://u:p@h/db",
            "PGPASSWORD": "x",
            "ARM_CLIENT_SECRET": "azure",
            "TF_LOG_PATH": "/tmp/log",
        }
    )
    assert set(env) == {"PATH", "HOME", "LANG", "HTTPS_PROXY", "ARM_CLIENT_SECRET", "TF_IN_AUTOMATION", "TF_INPUT"}


def test_apply_history_keeps_latest_per_module(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    remember_apply(path, "a", {"v": 1})
    remember_apply(path, "b", {"v": 10})
    remember_apply(path, "a", {"v": 2})
    assert previous_apply(path, "a") == {"v": 2}
    assert previous_apply(path, "b") == {"v": 10}
    assert previous_apply(path, "c") is None
