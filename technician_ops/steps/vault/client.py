"""Secrets in OpenBao/Vault KV v2: read at run time, rotate, roll back.

This is the controller-side logic behind runbook ``secrets:`` references and
the ``vault`` step kind.  The Ansible action plugin calls it; it never talks to
hosts.  Three rules shape everything here:

* A value never leaves this module except through an explicit call
  (:meth:`VaultClient.read`, :meth:`SecretValue.reveal`).  Every object's
  ``repr``/``str`` and every error message carries paths, key names and
  version numbers only; hvac's own exception text (which can hold response
  bodies) is never copied into ours.
* Nothing changes before we know it can succeed: the server is checked for
  reachability and seal state in :func:`connect`, the token's capabilities
  are checked before the first write, and the write itself is a
  check-and-set, so a concurrent writer makes the step fail with nothing
  published.
* Undo is a roll-forward, as ``bao kv rollback`` does: version N's data is
  written again as a new version, so history is never rewritten and the
  audit record can name every version involved.
"""

from __future__ import annotations

import os
import secrets as _secrets
import string
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from technician_ops.errors import (
    ConfigError,
    DependencyUnavailable,
    ExitCode,
    TechnicianOpsError,
)

if TYPE_CHECKING:  # hvac is imported lazily: a runbook without secrets must not need it
    import hvac

REF_SCHEME = "vault:"
DEFAULT_ADDR = "https://127.0.0.1:8200"  # what the vault/bao CLIs assume without VAULT_ADDR
DEFAULT_APPROLE_MOUNT = "approle"
REQUEST_TIMEOUT = 10.0  # seconds; a hung server must not hang a run forever


# --------------------------------------------------------------------- errors


class VaultError(TechnicianOpsError):
    """A Vault operation failed for a reason the operator has to look at."""

    exit_code = ExitCode.CONFIG


class VaultRefError(VaultError):
    """A ``vault:mount/path#key`` reference is malformed: the runbook is wrong."""

    exit_code = ExitCode.DATAERR


class VaultSecretNotFound(VaultError):
    """The secret, the version or the key a runbook names does not exist."""

    exit_code = ExitCode.CONFIG


class VaultPermissionError(VaultError):
    """The token lacks a capability on a path; raised before any change."""

    exit_code = ExitCode.CONFIG

    def __init__(self, path: str, missing: Sequence[str], *, hint: str | None = None) -> None:
        self.path = path
        self.missing = tuple(missing)
        super().__init__(
            f"Vault token lacks the {', '.join(repr(m) for m in self.missing)} "
            f"{'capability' if len(self.missing) == 1 else 'capabilities'} on {path}",
            hint=hint or f"grant the capability on {path} in the token's policy",
        )


class VaultConflict(VaultError):
    """Another writer changed the secret under us; nothing of ours was published."""

    exit_code = ExitCode.TEMPFAIL


class VaultRollbackRefused(VaultError):
    """The version to restore no longer exists (destroyed, deleted or pruned)."""

    exit_code = ExitCode.ROLLBACK_FAILED


class SecretGenerationError(VaultError):
    """A new value could not be produced; nothing was written."""

    exit_code = ExitCode.FAILED


# ------------------------------------------------------------ values and refs


class SecretValue:
    """A secret string that does not print itself.

    ``repr``/``str``/``format`` show a fixed marker, so a value that ends up in
    a log call, an f-string or a traceback's locals shows nothing.  Pickling
    is refused so it cannot be written to disk by accident; ``reveal()`` is the
    one deliberate way out.
    """

    __slots__ = ("_value",)
    MARKER = "<redacted>"

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"SecretValue({self.MARKER})"

    def __str__(self) -> str:
        return self.MARKER

    def __format__(self, spec: str) -> str:
        return self.MARKER

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretValue):
            return _secrets.compare_digest(self._value, other._value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a SecretValue cannot be pickled: secret values never go to disk")

    # Immutable: copies may share it (so dataclasses.asdict() works on a Rotation).
    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretValue:
        return self


@dataclass(frozen=True)
class SecretRef:
    """One key of one KV v2 secret: ``vault:<mount>/<path>#<key>``."""

    mount: str
    path: str
    key: str

    @property
    def display(self) -> str:
        """``mount/path#key``, the form used in messages and the audit record."""
        return f"{self.mount}/{self.path}#{self.key}"

    def __str__(self) -> str:
        return REF_SCHEME + self.display


def parse_ref(ref: str) -> SecretRef:
    """Parse ``vault:secret/app/db#password``; the mount is the first segment.

    Strict on purpose: a typo in a reference must stop validation, not read
    the wrong secret at 3 a.m.
    """
    if not isinstance(ref, str):
        raise VaultRefError(f"a Vault reference must be a string, not {type(ref).__name__}")
    if not ref.startswith(REF_SCHEME):
        raise VaultRefError(
            f"Vault reference {ref!r} must start with {REF_SCHEME!r}",
            hint="write it as vault:<mount>/<path>#<key>, e.g. vault:secret/app/db#password",
        )
    body = ref[len(REF_SCHEME) :]
    location, sep, key = body.partition("#")
    hint = "write it as vault:<mount>/<path>#<key>, e.g. vault:secret/app/db#password"
    if not sep or not key:
        raise VaultRefError(f"Vault reference {ref!r} names no key after '#'", hint=hint)
    if "#" in key:
        raise VaultRefError(f"Vault reference {ref!r} has more than one '#'", hint=hint)
    if key.strip() != key or any(c.isspace() for c in location):
        raise VaultRefError(f"Vault reference {ref!r} contains whitespace", hint=hint)
    mount, slash, path = location.partition("/")
    if not mount or not slash or not path:
        raise VaultRefError(
            f"Vault reference {ref!r} needs a mount and a path (mount/path)", hint=hint
        )
    segments = path.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise VaultRefError(
            f"Vault reference {ref!r} has an empty, '.' or '..' path segment", hint=hint
        )
    return SecretRef(mount=mount, path=path, key=key)


# ------------------------------------------------------------------ rotation


@dataclass(frozen=True)
class Rotation:
    """What a rotation changed: the audit record's view, never the value.

    ``old_version`` is the version N that was current before the rotation, 0
    when the secret did not exist.  ``key_existed`` says whether version N
    already held the key (False means the rotation added it).  ``new_value``
    is kept out of ``repr``, comparison and :meth:`as_record`; the action
    plugin hands ``new_value.reveal()`` to the apply tasks.
    """

    mount: str
    path: str
    key: str
    old_version: int
    new_version: int
    key_existed: bool = True
    new_value: SecretValue | None = field(default=None, repr=False, compare=False)

    @property
    def ref(self) -> SecretRef:
        return SecretRef(self.mount, self.path, self.key)

    def as_record(self) -> dict[str, Any]:
        """The JSON-safe dict the audit store keeps: path, key, versions."""
        return {
            "mount": self.mount,
            "path": self.path,
            "key": self.key,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "key_existed": self.key_existed,
        }


# ----------------------------------------------------------------- generation

_CHARSETS: dict[str, str] = {
    "alnum": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "urlsafe": string.ascii_letters + string.digits + "-_",
    # No whitespace, no quotes, no backslash: such values survive being
    # pasted into shell, YAML, SQL and connection strings unescaped.
    "printable-no-quote": "".join(
        c for c in string.printable if not c.isspace() and c not in "'\"`\\"
    ),
}
CHARSETS: tuple[str, ...] = tuple(_CHARSETS)
MAX_LENGTH = 4096


def generate(length: int = 32, charset: str = "alnum") -> str:
    """A new random value from the ``secrets`` CSPRNG."""
    if charset not in _CHARSETS:
        raise SecretGenerationError(
            f"unknown charset {charset!r}; choose one of {', '.join(CHARSETS)}"
        )
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_LENGTH:
        raise SecretGenerationError(
            f"secret length must be an integer from 1 to {MAX_LENGTH}, not {length!r}"
        )
    alphabet = _CHARSETS[charset]
    return "".join(_secrets.choice(alphabet) for _ in range(length))


def generate_from_command(argv: Sequence[str], *, timeout: float = 60.0) -> str:
    """Run ``argv`` (no shell) and return its stripped stdout as the new value.

    The command's output is never echoed, not even on failure: a generator
    that fails half way may already have printed the value.
    """
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise SecretGenerationError(
            "a generator command must be a non-empty list of strings (argv), not a shell string"
        )
    name = argv[0]
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, no shell: nothing is interpreted
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SecretGenerationError(f"generator command {name!r} not found") from None
    except PermissionError:
        raise SecretGenerationError(f"generator command {name!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise SecretGenerationError(
            f"generator command {name!r} did not finish within {timeout:g}s"
        ) from None
    if proc.returncode != 0:
        raise SecretGenerationError(
            f"generator command {name!r} exited with status {proc.returncode}",
            hint="its output is not shown because it may contain the secret; run it by hand",
        )
    value = proc.stdout.strip()
    if not value:
        raise SecretGenerationError(f"generator command {name!r} printed nothing")
    return value


# ------------------------------------------------------------------ connecting


def _env_get(env: Mapping[str, str], name: str) -> str | None:
    """``VAULT_X``, falling back to OpenBao's ``BAO_X``; empty counts as unset."""
    for var in (f"VAULT_{name}", f"BAO_{name}"):
        value = env.get(var)
        if value:
            return value
    return None


def connect(env: Mapping[str, str] | None = None) -> VaultClient:
    """A logged-in client built from the usual environment, or a clear error.

    Reads VAULT_ADDR, VAULT_NAMESPACE, VAULT_CACERT / VAULT_CAPATH, and the
    credentials in this order: VAULT_TOKEN, then AppRole (VAULT_ROLE_ID +
    VAULT_SECRET_ID, mount VAULT_APPROLE_MOUNT or ``approle``), then
    ``~/.vault-token``.  OpenBao's ``BAO_*`` names work as fallbacks.

    The server's health is checked before any login, so a stopped or sealed
    server fails with :class:`DependencyUnavailable` before anything else is
    attempted.
    """
    import hvac  # lazy: only runbooks that use Vault need it
    import requests

    env = os.environ if env is None else env
    addr = _env_get(env, "ADDR") or DEFAULT_ADDR
    addr_source = "VAULT_ADDR" if _env_get(env, "ADDR") else "VAULT_ADDR unset, default"
    namespace = _env_get(env, "NAMESPACE")
    verify: bool | str = True
    cacert = _env_get(env, "CACERT") or _env_get(env, "CAPATH")
    if cacert:
        if not Path(cacert).exists():
            raise ConfigError(f"VAULT_CACERT/VAULT_CAPATH {cacert} does not exist")
        verify = cacert

    # sys/health is a root-namespace endpoint: ask it without the namespace header.
    probe = hvac.Client(url=addr, verify=verify, timeout=REQUEST_TIMEOUT)
    _check_health(probe, addr, addr_source, requests)
    client = hvac.Client(url=addr, namespace=namespace, verify=verify, timeout=REQUEST_TIMEOUT)

    token = _env_get(env, "TOKEN")
    role_id, secret_id = _env_get(env, "ROLE_ID"), _env_get(env, "SECRET_ID")
    if token:
        auth = "token (VAULT_TOKEN)"
        client.token = token
    elif role_id and secret_id:
        auth = "approle"
        mount = _env_get(env, "APPROLE_MOUNT") or DEFAULT_APPROLE_MOUNT
        try:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=mount)
        except hvac.exceptions.VaultError as exc:
            raise ConfigError(
                f"AppRole login at {addr} (auth/{mount}) failed: HTTP {_status(exc)}",
                hint="check VAULT_ROLE_ID and VAULT_SECRET_ID (the secret id may have expired)",
            ) from None
        except requests.exceptions.RequestException:
            raise _unavailable(addr, addr_source) from None
    elif role_id or secret_id:
        raise ConfigError("AppRole needs both VAULT_ROLE_ID and VAULT_SECRET_ID; only one is set")
    else:
        home = env.get("HOME")
        token_file = (Path(home) if home else Path.home()) / ".vault-token"
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            token = ""
        except OSError as exc:
            raise ConfigError(f"cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError(
                f"no Vault credentials for {addr}",
                hint="set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID, "
                f"or log in so that {token_file} exists",
            )
        auth = f"token ({token_file})"
        client.token = token

    vc = VaultClient(
        client, addr=addr, namespace=namespace, auth_method=auth, addr_source=addr_source
    )
    vc._check_token()
    return vc


def _status(exc: BaseException) -> str:
    """The HTTP status of an hvac error, without its (body-carrying) message."""
    code = getattr(exc, "status_code", None)
    return str(code) if code is not None else type(exc).__name__


def _unavailable(
    addr: str, source: str, why: str = "is unreachable", *, hint: str | None = None
) -> DependencyUnavailable:
    return DependencyUnavailable(
        f"OpenBao/Vault at {addr} ({source}) {why}",
        hint=hint or "start or unseal the server, or point VAULT_ADDR at a running one",
    )


def _check_health(client: hvac.Client, addr: str, source: str, requests: Any) -> None:
    try:
        health = client.sys.read_health_status(method="GET")
    except requests.exceptions.SSLError:
        raise ConfigError(
            f"TLS verification of OpenBao/Vault at {addr} ({source}) failed",
            hint="set VAULT_CACERT to the CA certificate that signed the server's certificate",
        ) from None
    except requests.exceptions.RequestException:
        raise _unavailable(addr, source) from None
    if not isinstance(health, dict):
        # hvac returns the raw response for non-200 codes; the body is still JSON.
        try:
            health = health.json()
        except ValueError:
            raise _unavailable(addr, source, f"answered HTTP {health.status_code}") from None
    if not health.get("initialized", False):
        raise _unavailable(addr, source, "is not initialized")
    if health.get("sealed", False):
        raise _unavailable(addr, source, "is sealed")


# --------------------------------------------------------------------- client


class VaultClient:
    """KV v2 operations for one logged-in token.

    Wraps an ``hvac.Client``; its ``repr`` names the address and how it
    authenticated, never the token.
    """

    def __init__(
        self,
        client: hvac.Client,
        *,
        addr: str,
        namespace: str | None = None,
        auth_method: str = "token",
        addr_source: str = "VAULT_ADDR",
    ) -> None:
        import requests

        self._client = client
        self.addr = addr
        self.namespace = namespace
        self.auth_method = auth_method
        self.addr_source = addr_source
        self._requests = requests

    def __repr__(self) -> str:
        ns = f", namespace={self.namespace!r}" if self.namespace else ""
        return f"VaultClient(addr={self.addr!r}{ns}, auth={self.auth_method!r})"

    __str__ = __repr__

    # -- plumbing ---------------------------------------------------------

    def _call(
        self,
        what: str,
        path: str,
        fn: Callable[[], Any],
        *,
        capability: str | None = None,
        mutating: bool = False,
    ) -> Any:
        """Run one hvac request, turning its errors into ours.

        hvac's message can contain the response body, so only the status
        and our own words reach the error (and the hvac error is not chained).
        A 404 becomes :class:`VaultSecretNotFound` and a check-and-set
        mismatch :class:`VaultConflict`, which callers refine; a 403 names
        ``capability`` when the caller knows which one the request needs.
        A mutating request that got no answer may still have been applied,
        and the error says so.
        """
        import hvac

        try:
            return fn()
        except self._requests.exceptions.RequestException:
            hint = (
                f"the change may or may not have been applied: check the versions of {path} "
                "before retrying"
                if mutating
                else None
            )
            raise _unavailable(
                self.addr, self.addr_source, f"did not answer while trying to {what}", hint=hint
            ) from None
        except hvac.exceptions.InvalidPath:
            raise VaultSecretNotFound(f"Vault secret {path} does not exist") from None
        except hvac.exceptions.Forbidden:
            if capability:
                raise VaultPermissionError(path, [capability]) from None
            raise VaultError(
                f"Vault denied the request to {what} on {path} (HTTP 403)",
                hint="check the token's policy, or that it has not expired",
            ) from None
        except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError) as exc:
            raise _unavailable(
                self.addr, self.addr_source, f"failed to {what} (HTTP {_status(exc)})"
            ) from None
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                raise VaultConflict(f"{path} changed concurrently") from None
            raise VaultError(f"Vault refused to {what} on {path}: HTTP 400") from None
        except hvac.exceptions.VaultError as exc:
            raise VaultError(f"Vault could not {what} on {path}: HTTP {_status(exc)}") from None

    def _check_token(self) -> None:
        import hvac

        try:
            self._client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            raise ConfigError(
                f"the Vault token ({self.auth_method}) was rejected by {self.addr}",
                hint="it may have expired or been revoked; log in again",
            ) from None
        except self._requests.exceptions.RequestException:
            raise _unavailable(self.addr, self.addr_source) from None
        except hvac.exceptions.VaultError as exc:
            raise ConfigError(
                f"could not check the Vault token at {self.addr}: HTTP {_status(exc)}"
            ) from None

    @property
    def _kv(self) -> Any:
        return self._client.secrets.kv.v2

    def _metadata(self, mount: str, path: str) -> dict[str, Any] | None:
        """The secret's metadata, or None when it does not exist."""
        try:
            resp = self._call(
                "read the metadata",
                f"{mount}/metadata/{path}",
                lambda: self._kv.read_secret_metadata(path=path, mount_point=mount),
                capability="read",
            )
        except VaultSecretNotFound:
            return None
        return dict(resp["data"])

    def _read_version(self, mount: str, path: str, version: int | None) -> tuple[dict[str, Any], int]:
        """``(data, version)`` of one version; errors if absent or deleted."""
        where = f"{mount}/{path}" + (f" version {version}" if version else "")
        try:
            resp = self._call(
                "read",
                f"{mount}/data/{path}",
                lambda: self._kv.read_secret_version(
                    path=path, mount_point=mount, version=version, raise_on_deleted_version=False
                ),
                capability="read",
            )
        except VaultSecretNotFound:
            raise VaultSecretNotFound(f"Vault secret {where} does not exist") from None
        data = resp["data"]
        meta = data.get("metadata") or {}
        if data.get("data") is None:
            state = "destroyed" if meta.get("destroyed") else "deleted"
            raise VaultSecretNotFound(f"Vault secret {where} is {state}")
        return dict(data["data"]), int(meta["version"])

    def _write(self, mount: str, path: str, data: dict[str, Any], cas: int, what: str) -> int:
        """Check-and-set write; a CAS mismatch becomes :class:`VaultConflict`."""
        try:
            resp = self._call(
                what,
                f"{mount}/data/{path}",
                lambda: self._kv.create_or_update_secret(
                    path=path, secret=data, mount_point=mount, cas=cas
                ),
                capability="update" if cas else "create",
                mutating=True,
            )
        except VaultConflict:
            raise VaultConflict(
                    f"{mount}/{path} changed while we were writing it (expected version {cas} "
                    "to be current); nothing of ours was written",
                    hint="another writer is rotating this secret; retry when it is done",
                ) from None
        return int(resp["data"]["version"])

    # -- public API -------------------------------------------------------

    def read(self, ref: SecretRef, version: int | None = None) -> str:
        """The value of ``ref`` (latest version, or ``version``)."""
        data, got = self._read_version(ref.mount, ref.path, version)
        if ref.key not in data:
            raise VaultSecretNotFound(
                f"Vault secret {ref.mount}/{ref.path} version {got} has no key {ref.key!r}"
            )
        value = data[ref.key]
        if not isinstance(value, str):
            raise VaultError(
                f"Vault secret {ref.display} holds a {type(value).__name__}, not a string"
            )
        return value

    def current_version(self, mount: str, path: str) -> int:
        """The current version number, 0 when the secret does not exist."""
        meta = self._metadata(mount, path)
        return int(meta["current_version"]) if meta else 0

    def check_capabilities(
        self,
        mount: str,
        path: str,
        needed: Sequence[str] = ("read", "create", "update"),
        *,
        metadata_needed: Sequence[str] = ("read",),
    ) -> None:
        """Fail before any change if the token cannot do what we are about to.

        Asks ``sys/capabilities-self`` about the KV v2 data path (``needed``)
        and metadata path (``metadata_needed``: version numbers come from it).
        """
        data_path = f"{mount}/data/{path}"
        meta_path = f"{mount}/metadata/{path}"
        wanted = {data_path: tuple(needed), meta_path: tuple(metadata_needed)}
        resp = self._call(
            "check capabilities",
            data_path,
            lambda: self._client.sys.get_capabilities(paths=list(wanted)),
        )
        granted_all = resp.get("data", resp) if isinstance(resp, dict) else {}
        for p, caps in wanted.items():
            if not caps:
                continue
            granted = set(granted_all.get(p, ()))
            if "root" in granted:
                continue
            missing = [c for c in caps if c not in granted or "deny" in granted]
            if missing:
                raise VaultPermissionError(p, missing)

    def rotate(
        self,
        ref: SecretRef,
        generator: Callable[[], str],
        *,
        expected_version: int | None = None,
    ) -> Rotation:
        """Write a new value for ``ref.key`` as version N+1 with ``cas=N``.

        The other keys of the secret are carried over unchanged.  If anyone
        writes the secret between our read and our write, the check-and-set
        fails and :class:`VaultConflict` is raised with nothing published.

        ``expected_version`` is the N the caller recorded as its intent (from
        :meth:`current_version`) before calling: if the secret has moved on
        since, the rotation is refused rather than recorded against the
        wrong version.  The generator runs only after every check passed.
        """
        self.check_capabilities(ref.mount, ref.path)
        old_version = self.current_version(ref.mount, ref.path)
        if expected_version is not None and old_version != expected_version:
            raise VaultConflict(
                f"{ref.mount}/{ref.path} is at version {old_version}, not the recorded "
                f"version {expected_version}; nothing was written",
                hint="another writer changed it since the intent was recorded; retry",
            )
        if old_version:
            try:
                data, _ = self._read_version(ref.mount, ref.path, old_version)
            except VaultSecretNotFound as err:
                raise VaultError(
                    f"cannot rotate {ref.display}: {err.message}; its other keys would be lost",
                    hint="undelete the current version, or write the secret by hand first",
                ) from None
        else:
            data = {}
        key_existed = ref.key in data
        new = generator()
        if not isinstance(new, str) or not new:
            raise SecretGenerationError(f"the generator for {ref.display} returned no string")
        data[ref.key] = new
        new_version = self._write(ref.mount, ref.path, data, old_version, "write a new version")
        return Rotation(
            mount=ref.mount,
            path=ref.path,
            key=ref.key,
            old_version=old_version,
            new_version=new_version,
            key_existed=key_existed,
            new_value=SecretValue(new),
        )

    def roll_back(self, rotation: Rotation) -> int:
        """Undo ``rotation`` by rolling forward; returns the version now current.

        Version N's whole data is written again as a new version, with
        ``cas`` set to the rotation's own version: if someone wrote the secret
        after us, restoring N would overwrite their value, so that is refused
        (:class:`VaultConflict`) and left to a human.  A version N that was
        destroyed, soft-deleted or pruned is refused with
        :class:`VaultRollbackRefused`.

        When the secret did not exist before (``old_version == 0``) there is
        nothing to write back: the version we created is soft-deleted (the
        KV v2 ``DELETE data/`` call), so reads fail as before the rotation,
        history stays inspectable and ``undelete`` can recover it.  The return
        value is then that deleted version's number.
        """
        mount, path, n = rotation.mount, rotation.path, rotation.old_version
        where = f"{mount}/{path}"
        self.check_capabilities(mount, path, ("read", "delete") if n == 0 else ("read", "update"))
        meta = self._metadata(mount, path)
        if meta is None:
            raise VaultRollbackRefused(
                f"cannot roll back {where}: the secret and all its versions are gone"
            )
        current = int(meta["current_version"])
        if current != rotation.new_version:
            raise VaultConflict(
                f"cannot roll back {where}: it is at version {current}, not our version "
                f"{rotation.new_version}; restoring version {n} would overwrite another "
                "writer's value",
                hint="check who wrote the secret since, and restore by hand if needed",
            )
        if n == 0:
            self._call(
                "soft-delete the created version",
                f"{mount}/data/{path}",
                lambda: self._kv.delete_latest_version_of_secret(path=path, mount_point=mount),
                capability="delete",
                mutating=True,
            )
            return current
        self._refuse_unless_restorable(where, n, meta)
        data, _ = self._read_version(mount, path, n)
        return self._write(mount, path, data, current, f"restore version {n}")

    @staticmethod
    def _refuse_unless_restorable(where: str, n: int, meta: Mapping[str, Any]) -> None:
        oldest = int(meta.get("oldest_version") or 0)
        versions = meta.get("versions") or {}
        info = versions.get(str(n))
        if info is None or n < oldest:
            raise VaultRollbackRefused(
                f"cannot roll back {where} to version {n}: it was pruned "
                f"(oldest kept version is {max(oldest, min((int(v) for v in versions), default=0))})",
                hint="raise max_versions on the secret so rollback targets are kept",
            )
        if info.get("destroyed"):
            raise VaultRollbackRefused(
                f"cannot roll back {where} to version {n}: that version was destroyed"
            )
        if info.get("deletion_time"):
            raise VaultRollbackRefused(
                f"cannot roll back {where} to version {n}: that version was deleted",
                hint=f"undelete version {n} first if it should be restored",
            )


# ------------------------------------------------------------ run-time reads


def resolve_refs(
    refs: Mapping[str, str],
    *,
    env: Mapping[str, str] | None = None,
    client: VaultClient | None = None,
) -> dict[str, str]:
    """Read the front-matter form ``secrets: {name: "vault:mount/path#key"}``.

    Every reference is parsed before anything is contacted, so a typo fails
    without a network round trip; then one connection reads them all (an
    unreachable server fails once, before the run starts).  The values are
    returned as plain strings because they become the run's secret
    parameters, which the engine already keeps out of files and logs.
    """
    parsed: dict[str, SecretRef] = {}
    for name, ref in refs.items():
        try:
            parsed[name] = parse_ref(ref)
        except VaultRefError as err:
            raise VaultRefError(f"secret {name!r}: {err.message}", hint=err.hint) from None
    if not parsed:
        return {}
    vc = client or connect(env)
    values: dict[str, str] = {}
    for name, secret_ref in parsed.items():
        try:
            values[name] = vc.read(secret_ref)
        except VaultPermissionError:
            raise  # already names the path and the missing capability
        except VaultError as err:
            raise type(err)(f"secret {name!r}: {err.message}", hint=err.hint) from None
    return values
