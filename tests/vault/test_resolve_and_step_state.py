"""``resolve_refs`` and the vault step's state-file decisions, against a real OpenBao."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from technician_ops.steps.vault import client as vault
from technician_ops.steps.vault import controller as vault_step
from technician_ops.errors import DependencyUnavailable


def test_resolve_refs_reads_every_reference(root: Any, client_env: dict[str, str], secret_path: str) -> None:
    root.secrets.kv.v2.create_or_update_secret(path=secret_path, mount_point="secret",
                                               secret={"password": "pw-1", "user": "app"})
    values = vault.resolve_refs({"db_password": f"vault:secret/{secret_path}#password",
                                 "db_user": f"vault:secret/{secret_path}#user"}, env=client_env)
    assert values == {"db_password": "pw-1", "db_user": "app"}


def test_resolve_refs_names_the_secret_and_parses_before_connecting() -> None:
    # No server at all: a malformed ref must fail on parsing, not on connecting.
    with pytest.raises(vault.VaultRefError, match="secret 'db_password'"):
        vault.resolve_refs({"db_password": "vault:secret/app/db"}, env={"VAULT_ADDR": "http://127.0.0.1:9"})
    with pytest.raises(DependencyUnavailable):
        vault.resolve_refs({"db_password": "vault:secret/app/db#pw"}, env={"VAULT_ADDR": "http://127.0.0.1:9"})


def test_resolve_refs_missing_key(client_env: dict[str, str], root: Any, secret_path: str) -> None:
    root.secrets.kv.v2.create_or_update_secret(path=secret_path, mount_point="secret", secret={"a": "b"})
    with pytest.raises(vault.VaultSecretNotFound, match="secret 'x'.*no key 'password'"):
        vault.resolve_refs({"x": f"vault:secret/{secret_path}#password"}, env=client_env)


def _env(client_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**client_env, "TECHNICIAN_OPS_RUN_ID": "r1", "TECHNICIAN_OPS_STATE_DIR": str(tmp_path)}


def test_unanswered_write_that_did_not_happen_is_nothing_to_undo(
    root: Any, client_env: dict[str, str], secret_path: str, tmp_path: Path
) -> None:
    root.secrets.kv.v2.create_or_update_secret(path=secret_path, mount_point="secret", secret={"password": "a"})
    env = _env(client_env, tmp_path)
    path = vault_step.state_file("s", env)
    vault_step.write_state(path, {"mount": "secret", "path": secret_path, "key": "password",
                                  "old_version": 1, "new_version": None, "status": vault_step.UNKNOWN})
    undo = vault_step.roll_back("s", lambda _d: None, env)
    assert not undo.restored
    assert vault_step.read_state(path)["status"] == vault_step.NOT_WRITTEN


def test_unanswered_write_with_a_moved_secret_is_refused(
    root: Any, client_env: dict[str, str], secret_path: str, tmp_path: Path
) -> None:
    for value in ("a", "b"):
        root.secrets.kv.v2.create_or_update_secret(path=secret_path, mount_point="secret", secret={"password": value})
    env = _env(client_env, tmp_path)
    vault_step.write_state(vault_step.state_file("s", env), {
        "mount": "secret", "path": secret_path, "key": "password", "old_version": 1, "new_version": None,
        "status": vault_step.UNKNOWN})
    with pytest.raises(vault_step.VaultStepError, match="cannot be told whether that is ours"):
        vault_step.roll_back("s", lambda _d: None, env)


def test_rotation_of_a_new_key_is_undone_without_reapplying(
    root: Any, client_env: dict[str, str], secret_path: str, tmp_path: Path
) -> None:
    root.secrets.kv.v2.create_or_update_secret(path=secret_path, mount_point="secret", secret={"user": "app"})
    env = _env(client_env, tmp_path)
    records: list[dict[str, Any]] = []
    rotation = vault_step.rotate("s", f"vault:secret/{secret_path}#password", vault_step.Generator(), records.append, env)
    assert (rotation.old_version, rotation.new_version, rotation.key_existed) == (1, 2, False)
    undo = vault_step.roll_back("s", records.append, env)
    assert undo.restored and undo.rollback_version == 3 and undo.old_value is None
    assert [r["type"] for r in records] == ["secret_intent", "secret_version", "secret_version"]
    assert "password" not in root.secrets.kv.v2.read_secret_version(
        path=secret_path, mount_point="secret", raise_on_deleted_version=True)["data"]["data"]
    # A second undo (a retried rollback) changes nothing.
    assert not vault_step.roll_back("s", records.append, env).restored
