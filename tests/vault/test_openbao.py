"""vault.py against a real OpenBao server (bao server -dev on loopback)."""

from __future__ import annotations

import secrets
import time
import traceback
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from technician_ops.steps.vault import client as vault
from technician_ops.errors import ConfigError, DependencyUnavailable, ExitCode, TechnicianOpsError
from technician_ops.steps.vault.client import (
    SecretRef,
    VaultClient,
    VaultConflict,
    VaultPermissionError,
    VaultRollbackRefused,
    VaultSecretNotFound,
)
from tests.support.openbao import OpenBaoServer

pytestmark = [pytest.mark.integration, pytest.mark.openbao]

MOUNT = "secret"


def put(root: Any, path: str, data: dict[str, str]) -> int:
    resp = root.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=MOUNT)
    return int(resp["data"]["version"])


def latest(root: Any, path: str) -> tuple[dict[str, str], int]:
    resp = root.secrets.kv.v2.read_secret_version(
        path=path, mount_point=MOUNT, raise_on_deleted_version=True
    )
    return resp["data"]["data"], int(resp["data"]["metadata"]["version"])


def metadata(root: Any, path: str) -> dict[str, Any]:
    return root.secrets.kv.v2.read_secret_metadata(path=path, mount_point=MOUNT)["data"]


def fixed(value: str) -> Callable[[], str]:
    return lambda: value


class Spy:
    """A generator that counts its calls: proves a failure came before generation."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "must-never-be-written"


# ------------------------------------------------------------------ connecting


def test_connect_with_token_and_read(client: VaultClient, root: Any, secret_path: str) -> None:
    put(root, secret_path, {"password": "first", "user": "app"})
    put(root, secret_path, {"password": "second", "user": "app"})
    ref = SecretRef(MOUNT, secret_path, "password")
    assert client.read(ref) == "second"
    assert client.read(ref, version=1) == "first"
    assert client.current_version(MOUNT, secret_path) == 2
    assert client.auth_method == "token (VAULT_TOKEN)"


def test_read_errors_name_path_and_key(client: VaultClient, root: Any, secret_path: str) -> None:
    assert client.current_version(MOUNT, secret_path) == 0
    with pytest.raises(VaultSecretNotFound, match=f"{MOUNT}/{secret_path} does not exist"):
        client.read(SecretRef(MOUNT, secret_path, "password"))
    put(root, secret_path, {"user": "app"})
    with pytest.raises(VaultSecretNotFound, match="version 1 has no key 'password'"):
        client.read(SecretRef(MOUNT, secret_path, "password"))
    with pytest.raises(VaultSecretNotFound, match="version 7 does not exist"):
        client.read(SecretRef(MOUNT, secret_path, "user"), version=7)


def test_connect_uses_token_file(bao_server: OpenBaoServer, tmp_path: Path) -> None:
    (tmp_path / ".vault-token").write_text(bao_server.token + "\n")
    client = vault.connect({"VAULT_ADDR": bao_server.addr, "HOME": str(tmp_path)})
    assert client.auth_method == f"token ({tmp_path / '.vault-token'})"
    assert client.current_version(MOUNT, "tests/never-written") == 0


def test_connect_accepts_bao_names(bao_server: OpenBaoServer, tmp_path: Path) -> None:
    env = {"BAO_ADDR": bao_server.addr, "BAO_TOKEN": bao_server.token, "HOME": str(tmp_path)}
    assert vault.connect(env).addr == bao_server.addr


def test_connect_without_credentials(bao_server: OpenBaoServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Vault credentials") as info:
        vault.connect({"VAULT_ADDR": bao_server.addr, "HOME": str(tmp_path)})
    assert "VAULT_TOKEN" in str(info.value.hint)
    with pytest.raises(ConfigError, match="needs both VAULT_ROLE_ID and VAULT_SECRET_ID"):
        vault.connect({"VAULT_ADDR": bao_server.addr, "HOME": str(tmp_path), "VAULT_ROLE_ID": "x"})


def test_connect_rejects_a_bad_token(bao_server: OpenBaoServer, tmp_path: Path) -> None:
    bad = "s.not-a-real-token-" + secrets.token_hex(8)
    with pytest.raises(ConfigError, match="was rejected") as info:
        vault.connect({"VAULT_ADDR": bao_server.addr, "VAULT_TOKEN": bad, "HOME": str(tmp_path)})
    assert bad not in _everything_shown(info.value)


def test_connect_over_tls_with_cacert(tmp_path_factory: pytest.TempPathFactory) -> None:
    with OpenBaoServer.dev(tmp_path_factory.mktemp("openbao-tls"), tls=True) as server:
        assert server.addr.startswith("https://")
        home = str(tmp_path_factory.mktemp("home"))
        client = vault.connect({**server.env, "HOME": home})
        assert client.current_version(MOUNT, "nothing/here") == 0
        # Without the CA the certificate is not trusted: a configuration error.
        env = {k: v for k, v in server.env.items() if k != "VAULT_CACERT"}
        with pytest.raises(ConfigError, match="TLS verification of .* failed") as info:
            vault.connect({**env, "HOME": home})
        assert "VAULT_CACERT" in str(info.value.hint)
        with pytest.raises(ConfigError, match="does not exist"):
            vault.connect({**server.env, "HOME": home, "VAULT_CACERT": "/nonexistent/ca.pem"})


def test_approle_login(bao_server: OpenBaoServer, root: Any, secret_path: str, tmp_path: Path) -> None:
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        name="approle-reader",
        policy=f'path "{MOUNT}/data/{secret_path}" {{ capabilities = ["read"] }}',
    )
    root.auth.approle.create_or_update_approle("runner", token_policies=["approle-reader"])
    role_id = root.auth.approle.read_role_id("runner")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("runner")["data"]["secret_id"]
    put(root, secret_path, {"password": "via-approle"})

    env = {
        "VAULT_ADDR": bao_server.addr,
        "VAULT_ROLE_ID": role_id,
        "VAULT_SECRET_ID": secret_id,
        "HOME": str(tmp_path),
    }
    client = vault.connect(env)
    assert client.auth_method == "approle"
    assert client.read(SecretRef(MOUNT, secret_path, "password")) == "via-approle"

    wrong = "0" * 8 + secret_id[8:]
    with pytest.raises(ConfigError, match="AppRole login") as info:
        vault.connect({**env, "VAULT_SECRET_ID": wrong})
    shown = _everything_shown(info.value)
    assert secret_id not in shown and wrong not in shown


def wait_for_kv_v2(client: Any, mount: str, timeout: float = 20.0) -> None:
    """A new KV v2 mount upgrades itself in the background and answers "Upgrading from non-versioned to
    versioned data" meanwhile (seen under parallel test load): wait until a read gets its real answer."""
    import time

    import hvac.exceptions

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.secrets.kv.v2.read_secret_version(path="technician-ops-probe", mount_point=mount,
                                                     raise_on_deleted_version=True)
            return
        except hvac.exceptions.InvalidPath:
            return  # not found: the mount answers
        except hvac.exceptions.InvalidRequest as exc:
            if "upgrading" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_namespace(bao_server: OpenBaoServer, root: Any, tmp_path: Path) -> None:
    ns = "team-" + secrets.token_hex(3)
    root.sys.create_namespace(path=ns)
    ns_root = bao_server.client()
    ns_root.adapter.namespace = ns
    ns_root.session.headers["X-Vault-Namespace"] = ns
    ns_root.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
    wait_for_kv_v2(ns_root, "kv")
    ns_root.secrets.kv.v2.create_or_update_secret(
        path="app/db", secret={"password": "in-namespace"}, mount_point="kv"
    )
    ref = vault.parse_ref("vault:kv/app/db#password")
    client = vault.connect({**bao_server.env, "VAULT_NAMESPACE": ns, "HOME": str(tmp_path)})
    assert client.read(ref) == "in-namespace"
    assert ns in repr(client)
    outside = vault.connect({**bao_server.env, "HOME": str(tmp_path)})
    with pytest.raises(VaultSecretNotFound):
        outside.read(ref)


# -------------------------------------------------------------------- rotating


def test_rotate_writes_next_version_and_keeps_other_keys(
    client: VaultClient, root: Any, secret_path: str
) -> None:
    put(root, secret_path, {"password": "old-value", "user": "app"})
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("new-value"))
    assert (rotation.old_version, rotation.new_version, rotation.key_existed) == (1, 2, True)
    assert rotation.new_value is not None and rotation.new_value.reveal() == "new-value"
    assert latest(root, secret_path) == ({"password": "new-value", "user": "app"}, 2)
    assert client.read(rotation.ref, version=rotation.new_version) == "new-value"


def test_rotate_creates_an_absent_secret(client: VaultClient, root: Any, secret_path: str) -> None:
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "token"), lambda: vault.generate(24))
    assert (rotation.old_version, rotation.new_version, rotation.key_existed) == (0, 1, False)
    data, version = latest(root, secret_path)
    assert version == 1 and list(data) == ["token"] and len(data["token"]) == 24


def test_rotate_conflict_publishes_nothing(client: VaultClient, root: Any, secret_path: str) -> None:
    put(root, secret_path, {"password": "original"})

    def racing_generator() -> str:
        # Another writer gets in between our read of version 1 and our write.
        put(root, secret_path, {"password": "other-writer"})
        return "ours-must-not-appear"

    with pytest.raises(VaultConflict) as info:
        client.rotate(SecretRef(MOUNT, secret_path, "password"), racing_generator)
    assert info.value.exit_code is ExitCode.TEMPFAIL
    assert f"{MOUNT}/{secret_path}" in str(info.value)
    assert latest(root, secret_path) == ({"password": "other-writer"}, 2)
    assert metadata(root, secret_path)["current_version"] == 2


def test_rotate_conflict_on_creation(client: VaultClient, root: Any, secret_path: str) -> None:
    def racing_generator() -> str:
        put(root, secret_path, {"password": "created-by-other"})
        return "ours-must-not-appear"

    with pytest.raises(VaultConflict):
        client.rotate(SecretRef(MOUNT, secret_path, "password"), racing_generator)
    assert latest(root, secret_path) == ({"password": "created-by-other"}, 1)


def test_rotate_refuses_when_current_version_is_deleted(
    client: VaultClient, root: Any, secret_path: str
) -> None:
    put(root, secret_path, {"password": "a", "user": "app"})
    root.secrets.kv.v2.delete_latest_version_of_secret(path=secret_path, mount_point=MOUNT)
    spy = Spy()
    with pytest.raises(vault.VaultError, match="is deleted; its other keys would be lost"):
        client.rotate(SecretRef(MOUNT, secret_path, "password"), spy)
    assert spy.calls == 0
    assert metadata(root, secret_path)["current_version"] == 1


# ---------------------------------------------------------------- rolling back


def test_roll_back_writes_version_n_again(client: VaultClient, root: Any, secret_path: str) -> None:
    put(root, secret_path, {"password": "p0", "user": "app"})
    put(root, secret_path, {"password": "original", "user": "app"})
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("rotated"))
    assert (rotation.old_version, rotation.new_version) == (2, 3)

    written = client.roll_back(rotation)
    assert written == 4
    assert latest(root, secret_path) == ({"password": "original", "user": "app"}, 4)
    # History is rolled forward, not rewritten: the rotated version is still there.
    assert client.read(rotation.ref, version=3) == "rotated"


def test_roll_back_when_the_key_was_added(client: VaultClient, root: Any, secret_path: str) -> None:
    put(root, secret_path, {"user": "app"})
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("new"))
    assert (rotation.old_version, rotation.key_existed) == (1, False)
    assert client.roll_back(rotation) == 3
    assert latest(root, secret_path) == ({"user": "app"}, 3)


def test_roll_back_of_a_created_secret_soft_deletes_it(
    client: VaultClient, root: Any, secret_path: str
) -> None:
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("new"))
    assert client.roll_back(rotation) == 1
    with pytest.raises(VaultSecretNotFound, match="is deleted"):
        client.read(rotation.ref)
    meta = metadata(root, secret_path)
    assert meta["versions"]["1"]["deletion_time"] and not meta["versions"]["1"]["destroyed"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("destroy", "version 1: that version was destroyed"),
        ("delete", "version 1: that version was deleted"),
    ],
)
def test_roll_back_refuses_a_lost_target(
    client: VaultClient, root: Any, secret_path: str, damage: str, message: str
) -> None:
    put(root, secret_path, {"password": "original"})
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("rotated"))
    kv = root.secrets.kv.v2
    if damage == "destroy":
        kv.destroy_secret_versions(path=secret_path, versions=[1], mount_point=MOUNT)
    else:
        kv.delete_secret_versions(path=secret_path, versions=[1], mount_point=MOUNT)
    with pytest.raises(VaultRollbackRefused, match=message) as info:
        client.roll_back(rotation)
    assert info.value.exit_code is ExitCode.ROLLBACK_FAILED
    assert latest(root, secret_path) == ({"password": "rotated"}, 2)


def test_roll_back_refuses_a_pruned_target(client: VaultClient, root: Any, secret_path: str) -> None:
    put(root, secret_path, {"password": "original"})
    root.secrets.kv.v2.update_metadata(path=secret_path, max_versions=1, mount_point=MOUNT)
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("rotated"))
    with pytest.raises(VaultRollbackRefused, match="version 1: it was pruned") as info:
        client.roll_back(rotation)
    assert "max_versions" in str(info.value.hint)
    assert latest(root, secret_path) == ({"password": "rotated"}, 2)


def test_roll_back_refuses_to_overwrite_a_later_writer(
    client: VaultClient, root: Any, secret_path: str
) -> None:
    put(root, secret_path, {"password": "original"})
    rotation = client.rotate(SecretRef(MOUNT, secret_path, "password"), fixed("rotated"))
    put(root, secret_path, {"password": "someone-else"})
    with pytest.raises(VaultConflict, match="it is at version 3, not our version 2"):
        client.roll_back(rotation)
    assert latest(root, secret_path) == ({"password": "someone-else"}, 3)


# ----------------------------------------------------------------- permissions


def test_read_only_token_is_refused_before_any_change(
    bao_server: OpenBaoServer, root: Any, secret_path: str, tmp_path: Path
) -> None:
    root.sys.create_or_update_policy(
        name=f"ro-{secret_path.replace('/', '-')}",
        policy=(
            f'path "{MOUNT}/data/{secret_path}" {{ capabilities = ["read"] }}\n'
            f'path "{MOUNT}/metadata/{secret_path}" {{ capabilities = ["read"] }}\n'
        ),
    )
    token = root.auth.token.create(policies=[f"ro-{secret_path.replace('/', '-')}"], ttl="10m")
    ro_token = token["auth"]["client_token"]
    put(root, secret_path, {"password": "original"})
    client = vault.connect({"VAULT_ADDR": bao_server.addr, "VAULT_TOKEN": ro_token, "HOME": str(tmp_path)})
    ref = SecretRef(MOUNT, secret_path, "password")
    assert client.read(ref) == "original"

    with pytest.raises(VaultPermissionError) as info:
        client.check_capabilities(MOUNT, secret_path)
    err = info.value
    assert err.path == f"{MOUNT}/data/{secret_path}"
    assert err.missing == ("create", "update")
    assert f"'create', 'update' capabilities on {MOUNT}/data/{secret_path}" in str(err)
    assert err.exit_code is ExitCode.CONFIG

    spy = Spy()
    with pytest.raises(VaultPermissionError, match=f"on {MOUNT}/data/{secret_path}"):
        client.rotate(ref, spy)
    assert spy.calls == 0, "the generator must not run when the write is not allowed"
    assert latest(root, secret_path) == ({"password": "original"}, 1)
    assert ro_token not in _everything_shown(err)


def test_missing_metadata_capability_is_named(
    bao_server: OpenBaoServer, root: Any, secret_path: str, tmp_path: Path
) -> None:
    name = f"nometa-{secret_path.replace('/', '-')}"
    root.sys.create_or_update_policy(
        name=name,
        policy=f'path "{MOUNT}/data/{secret_path}" {{ capabilities = ["read", "create", "update"] }}',
    )
    tok = root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    client = vault.connect({"VAULT_ADDR": bao_server.addr, "VAULT_TOKEN": tok, "HOME": str(tmp_path)})
    with pytest.raises(VaultPermissionError, match=f"'read' capability on {MOUNT}/metadata/"):
        client.check_capabilities(MOUNT, secret_path)


# -------------------------------------------------------------- server outages


def test_stopped_server_fails_before_touching_anything(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    server = OpenBaoServer.dev(tmp_path_factory.mktemp("openbao-stopped")).start()
    env = {**server.env, "HOME": str(tmp_path)}
    try:
        client = vault.connect(env)
        server.client().secrets.kv.v2.create_or_update_secret(
            path="app/db", secret={"password": "x"}, mount_point=MOUNT
        )
    finally:
        server.stop()

    spy = Spy()
    with pytest.raises(DependencyUnavailable) as info:
        client.rotate(SecretRef(MOUNT, "app/db", "password"), spy)
    assert spy.calls == 0
    assert server.addr in str(info.value) and "VAULT_ADDR" in str(info.value)
    assert info.value.exit_code is ExitCode.TEMPFAIL

    with pytest.raises(DependencyUnavailable, match=f"{server.addr} \\(VAULT_ADDR\\) is unreachable"):
        vault.connect(env)
    assert server.token not in _everything_shown(info.value)


def test_disk_storage_survives_restart_and_sealed_is_unavailable(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    state = tmp_path_factory.mktemp("openbao-disk")
    server = OpenBaoServer.persistent(state)
    with server:
        server.client().sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        wait_for_kv_v2(server.client(), MOUNT)
        client = vault.connect({**server.env, "HOME": str(tmp_path)})
        rotation = client.rotate(SecretRef(MOUNT, "app/db", "password"), fixed("kept-on-disk"))
    assert not server.running

    with server:  # same state dir: unsealed with the saved key, not re-initialised
        client = vault.connect({**server.env, "HOME": str(tmp_path)})
        assert client.read(rotation.ref) == "kept-on-disk"
        assert client.current_version(MOUNT, "app/db") == rotation.new_version == 1

        server.client().sys.seal()
        with pytest.raises(DependencyUnavailable, match="is sealed"):
            vault.connect({**server.env, "HOME": str(tmp_path)})
        with pytest.raises(DependencyUnavailable):
            client.rotate(rotation.ref, fixed("never"))
        server.client().sys.submit_unseal_key(server.unseal_key)
        # Unsealed is not yet active: OpenBao answers 500 until its post-unseal setup is done.
        deadline = time.monotonic() + 15
        while True:
            try:
                assert client.read(rotation.ref) == "kept-on-disk"
                break
            except DependencyUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


# ---------------------------------------------------------------------- canary


def _everything_shown(err: BaseException) -> str:
    """Every text an error can put in front of a person: message, hint, traceback."""
    parts = [str(err), repr(err), str(getattr(err, "hint", "") or "")]
    parts += traceback.format_exception(type(err), err, err.__traceback__)
    return "\n".join(parts)


def test_canary_token_and_values_never_shown(
    bao_server: OpenBaoServer, client: VaultClient, root: Any, secret_path: str
) -> None:
    canary_old = "CANARY-OLD-" + secrets.token_hex(8)
    canary_new = "CANARY-NEW-" + secrets.token_hex(8)
    canary_other = "CANARY-OTHER-" + secrets.token_hex(8)
    put(root, secret_path, {"password": canary_old})
    ref = SecretRef(MOUNT, secret_path, "password")

    shown: list[str] = [repr(client), str(client), repr(bao_server), str(ref)]
    rotation = client.rotate(ref, fixed(canary_new))
    shown += [repr(rotation), str(rotation), repr(rotation.as_record()), repr(rotation.new_value)]
    shown += [str(rotation.new_value), f"{rotation.new_value}"]

    errors: list[TechnicianOpsError] = []

    def racing() -> str:
        put(root, secret_path, {"password": canary_other})
        return canary_new

    for action in (
        lambda: client.rotate(ref, racing),
        lambda: client.roll_back(rotation),  # someone else wrote after us
        lambda: client.read(SecretRef(MOUNT, secret_path, "missing")),
        lambda: client.read(ref, version=99),
    ):
        with pytest.raises(TechnicianOpsError) as info:
            action()
        errors.append(info.value)
    shown += [_everything_shown(e) for e in errors]

    text = "\n".join(shown)
    for secret_text in (bao_server.token, canary_old, canary_new, canary_other):
        assert secret_text not in text
    assert f"{MOUNT}/{secret_path}" in text  # the test looked at real messages


def test_rotate_refuses_when_the_recorded_intent_is_stale(
    client: VaultClient, root: Any, secret_path: str
) -> None:
    put(root, secret_path, {"password": "original"})
    recorded = client.current_version(MOUNT, secret_path)
    put(root, secret_path, {"password": "moved-on"})
    spy = Spy()
    with pytest.raises(VaultConflict, match="at version 2, not the recorded version 1"):
        client.rotate(SecretRef(MOUNT, secret_path, "password"), spy, expected_version=recorded)
    assert spy.calls == 0
    assert latest(root, secret_path) == ({"password": "moved-on"}, 2)


def test_denied_read_names_path_and_capability(
    bao_server: OpenBaoServer, root: Any, secret_path: str, tmp_path: Path
) -> None:
    name = f"metaonly-{secret_path.replace('/', '-')}"
    root.sys.create_or_update_policy(
        name=name, policy=f'path "{MOUNT}/metadata/{secret_path}" {{ capabilities = ["read"] }}'
    )
    tok = root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    put(root, secret_path, {"password": "original"})
    client = vault.connect({"VAULT_ADDR": bao_server.addr, "VAULT_TOKEN": tok, "HOME": str(tmp_path)})
    assert client.current_version(MOUNT, secret_path) == 1
    with pytest.raises(VaultPermissionError) as info:
        client.read(SecretRef(MOUNT, secret_path, "password"))
    assert (info.value.path, info.value.missing) == (f"{MOUNT}/data/{secret_path}", ("read",))
