"""What the ``vault`` step kind does at run time, outside Ansible's plumbing.

The two action plugins (``technician_ops_vault_rotate`` and
``technician_ops_vault_rollback``) are thin: they read their task arguments,
call :func:`rotate`, :func:`dry_run` or :func:`roll_back` here, and turn the
outcome into a task result.  Keeping the logic here makes it testable without
an Ansible process and keeps the plugins free of decisions.

Between the run and its rollback (a second ansible-runner execution, another
process) the rotation is remembered in a small JSON *state file* in the run's
private data dir: mount, path, key and version numbers, never the value.  The
file is written as an intent before the secret is touched, so a rollback can
tell "nothing was written" from "the write's outcome is unknown".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.steps.vault import client as vault
from technician_ops.errors import TechnicianOpsError
from technician_ops.steps.vault.client import Rotation, SecretValue, VaultConflict, VaultError

# The state file's ``status``, in the order a rotation moves through them.
INTENT = "intent"  # versions read, nothing written yet
NOT_WRITTEN = "not_written"  # the rotation failed with nothing published
UNKNOWN = "unknown"  # the write got no answer: it may or may not have happened
ROTATED = "rotated"  # version new_version is ours
ROLLED_BACK = "rolled_back"  # version old_version's data was written again

Emit = Callable[[dict[str, Any]], None]


class VaultStepError(VaultError):
    """The vault step cannot go on; the message names paths and versions only."""


@dataclass(frozen=True)
class Generator:
    """How the new value is made: ``generate`` (length, charset) or ``command`` (argv)."""

    length: int = 32
    charset: str = "alnum"
    command: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Generator:
        if args.get("command"):
            return cls(command=tuple(str(a) for a in args["command"]))
        spec = args.get("generate") or {}
        return cls(length=int(spec.get("length", 32)), charset=str(spec.get("charset", "alnum")))

    def __call__(self) -> str:
        if self.command:
            return vault.generate_from_command(self.command)
        return vault.generate(self.length, self.charset)

    @property
    def description(self) -> str:
        """For the audit record: how, never what."""
        if self.command:
            return f"command {self.command[0]}"
        return f"generate {self.length} {self.charset}"


def state_file(step: str, env: Mapping[str, str] | None = None) -> Path:
    """``<state_dir>/runs/<run_id>/vault-<step>.json`` of the current run.

    The run id and state dir come from the environment technician-ops gives
    the Ansible process, so the run and its rollback (two executions) agree.
    """
    env = os.environ if env is None else env
    run_id, state_dir = env.get("TECHNICIAN_OPS_RUN_ID"), env.get("TECHNICIAN_OPS_STATE_DIR")
    if not run_id or not state_dir:
        raise VaultStepError(
            "the vault step must run under technician-ops (no TECHNICIAN_OPS_RUN_ID/STATE_DIR)",
            hint="run the runbook with 'technician-ops run', not ansible-playbook",
        )
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", step)
    return Path(state_dir) / "runs" / run_id / f"vault-{safe}.json"


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Atomically replace the state file (mode 0600): a crash leaves the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(state), fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The recorded rotation, or None when the step never recorded one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise VaultStepError(f"cannot read the vault step's state file {path}: {exc}") from None
    if not isinstance(data, dict) or "status" not in data:
        raise VaultStepError(f"the vault step's state file {path} is not a recorded rotation")
    return data


def _where(ref: vault.SecretRef) -> str:
    return f"{ref.mount}/{ref.path}"


def dry_run(step: str, secret: str, generator: Generator, emit: Emit,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``--check``: prove the rotation could happen; change nothing.

    Connects, checks the token's capabilities and reads the current version;
    the generator is not run (a command generator may have side effects).
    """
    ref = vault.parse_ref(secret)
    client = vault.connect(env)
    client.check_capabilities(ref.mount, ref.path)
    current = client.current_version(ref.mount, ref.path)
    record = {
        "type": "secret_version", "step": step, "dry_run": True, "mount": ref.mount,
        "path": _where(ref), "key": ref.key, "old_version": current, "new_version": current + 1,
        "generator": generator.description,
    }
    emit(record)
    return record


def check_access(secrets: list[str], *, check: bool = False, env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`~technician_ops.steps.vault.client.VaultPermissionError` (path and capability) unless the
    token may do what the steps rotating ``secrets`` will do: read for a dry run, read, create
    and update otherwise (plus read on the metadata path).  Writes nothing."""
    if not secrets:
        return
    client = vault.connect(env)
    needed = ("read",) if check else ("read", "create", "update")
    for secret in secrets:
        ref = vault.parse_ref(secret)
        client.check_capabilities(ref.mount, ref.path, needed)


def rotate(step: str, secret: str, generator: Generator, emit: Emit,
           env: Mapping[str, str] | None = None) -> Rotation:
    """Write a new value for ``secret``: intent recorded first, then a CAS write.

    On any failure the state file says whether something may have been
    published (``unknown``: the write got no answer) or not (``not_written``),
    which is what the rollback acts on.  The returned rotation carries the
    value (a :class:`SecretValue`) for the apply and verify tasks.
    """
    ref = vault.parse_ref(secret)
    path = state_file(step, env)
    client = vault.connect(env)
    client.check_capabilities(ref.mount, ref.path)
    from_version = client.current_version(ref.mount, ref.path)
    state: dict[str, Any] = {
        "step": step, "mount": ref.mount, "path": ref.path, "key": ref.key,
        "old_version": from_version, "new_version": None, "key_existed": None, "status": INTENT,
    }
    write_state(path, state)
    emit({"type": "secret_intent", "step": step, "mount": ref.mount, "path": _where(ref),
          "key": ref.key, "from_version": from_version, "generator": generator.description})

    generated = False

    def make() -> str:
        nonlocal generated
        value = generator()
        generated = True  # the write follows immediately
        return value

    try:
        rotation = client.rotate(ref, make, expected_version=from_version)
    except BaseException as exc:
        # A CAS rejection is a definite "no"; any other failure after the
        # value existed may have reached the server.
        may_be_written = generated and not isinstance(exc, VaultConflict)
        write_state(path, {**state, "status": UNKNOWN if may_be_written else NOT_WRITTEN})
        raise
    write_state(path, {**state, **rotation.as_record(), "status": ROTATED})
    emit({"type": "secret_version", "step": step, "mount": ref.mount, "path": _where(ref),
          "key": ref.key, "old_version": rotation.old_version, "new_version": rotation.new_version})
    return rotation


@dataclass(frozen=True)
class Undo:
    """What :func:`roll_back` did: the version now current and the value to re-apply."""

    restored: bool
    rollback_version: int | None = None
    old_value: SecretValue | None = None  # None: nothing to re-apply (the key was new)
    reason: str = ""


def roll_back(step: str, emit: Emit, env: Mapping[str, str] | None = None) -> Undo:
    """Undo the step's recorded rotation by writing version N's data again.

    Nothing recorded, or a rotation that published nothing, is nothing to
    undo.  An unanswered write is resolved by looking at the current version:
    still N means it never happened; anything else cannot be attributed and is
    left to a human (an error, so the rollback fails loudly).
    """
    path = state_file(step, env)
    state = read_state(path)
    if state is None or state["status"] in (INTENT, NOT_WRITTEN):
        return Undo(False, reason="the rotation published nothing")
    if state["status"] == ROLLED_BACK:
        return Undo(False, rollback_version=state.get("rollback_version"), reason="already rolled back")
    ref = vault.SecretRef(state["mount"], state["path"], state["key"])
    old_version = int(state["old_version"])
    client = vault.connect(env)
    if state["status"] == UNKNOWN:
        current = client.current_version(ref.mount, ref.path)
        if current == old_version:
            write_state(path, {**state, "status": NOT_WRITTEN})
            return Undo(False, reason="the unanswered write did not happen")
        raise VaultStepError(
            f"cannot roll back {_where(ref)}: the rotation's write got no answer and the secret "
            f"is now at version {current} (was {old_version}); it cannot be told whether that is ours",
            hint=f"compare versions {old_version} and {current} and restore by hand if needed",
        )
    rotation = Rotation(ref.mount, ref.path, ref.key, old_version, int(state["new_version"]),
                        key_existed=bool(state.get("key_existed", True)))
    restored = client.roll_back(rotation)
    old_value: SecretValue | None = None
    if old_version and rotation.key_existed:
        old_value = SecretValue(client.read(ref, version=old_version))
    write_state(path, {**state, "status": ROLLED_BACK, "rollback_version": restored})
    emit({"type": "secret_version", "step": step, "mount": ref.mount, "path": _where(ref),
          "key": ref.key, "rollback_version": restored, "restored_version": old_version,
          "replaced_version": rotation.new_version, "deleted": old_version == 0})
    return Undo(True, restored, old_value,
                "" if old_value is not None else f"version {old_version} had no key {ref.key!r}: nothing to re-apply")


def is_tempfail(exc: BaseException) -> bool:
    """Vault/OpenBao down, sealed or answering 5xx: the run exits 75 (retry later) once it undid what changed."""
    from technician_ops.errors import DependencyUnavailable

    return isinstance(exc, DependencyUnavailable)


def describe(exc: BaseException) -> str:
    """A failure as one line for the task result: our message, never hvac's text."""
    if isinstance(exc, TechnicianOpsError):
        hint = getattr(exc, "hint", None)
        return f"{exc.message}" + (f" ({hint})" if hint else "")
    return f"{type(exc).__name__} in the vault step (details withheld: they may contain the secret)"


# -- undoing an earlier run's rotation (``rollback RUN_ID``, ``recover RUN_ID``) ------------


@dataclass
class Recovery:
    """What a killed run's rotation left, decided by reading only (``converge``); a ``steps.base.UndoDecision``."""

    step: str
    state_file: Path
    found: str | None
    then: str  # "undo" or "nothing"
    set: str | None = None  # the state this decision writes before the undo runs
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def undo(self) -> bool:
        return self.then == "undo"

    @property
    def changes_state(self) -> bool:
        return self.set is not None

    def describe(self) -> str | None:
        return None if self.undo else f"vault step {self.step}: nothing of it was published"

    def artifact(self) -> dict[str, Any]:
        data = {"type": "secret_recovery", "step": self.step, "found": self.found, "then": self.then, **self.facts}
        if self.set is not None:
            data["set"] = self.set
        return data

    def apply(self, new_run_id: str) -> None:
        """Write the decision into the state file the undo reads."""
        if self.set is None:
            return
        state = read_state(self.state_file) or {}
        extra: dict[str, Any] = {k: self.facts[k] for k in ("new_version", "key_existed") if k in self.facts}
        write_state(self.state_file, {**state, **extra, "status": self.set, "recovered_by": new_run_id})


def past_state_file(step: str, state_dir: Path, run_id: str) -> Path:
    return state_file(step, {"TECHNICIAN_OPS_RUN_ID": run_id, "TECHNICIAN_OPS_STATE_DIR": str(state_dir)})


def check_past_rollback(step: str, state_dir: Path, run_id: str) -> None:
    """``rollback RUN_ID``: the step's state file must say the rotation is ours and complete."""
    from technician_ops.errors import PastRunError

    path = past_state_file(step, state_dir, run_id)
    state = read_state(path)
    status = state["status"] if state else None
    if status != ROTATED:
        what = "is missing" if state is None else f"says {status!r}"
        raise PastRunError(f"run {run_id} cannot be undone: the state file of vault step {step} ({path}) {what}, "
                           "not 'rotated'", hint="nothing was changed; compare the secret's versions by hand")


def converge(step: str, state_dir: Path, run_id: str) -> Recovery:
    """Decide (reading only) what a killed rotation left, from its intent and Vault's current version.

    - no state file, or ``not_written``/``rolled_back``: nothing of ours is published;
    - ``intent``/``unknown`` and Vault still at ``from_version``: the write never happened -> ``not_written``;
    - ``intent``/``unknown`` and Vault at ``from_version + 1``: our check-and-set write landed but the
      process died before recording it -> treated as ours (``rotated``) and undone. A CAS write with
      ``cas=from_version`` is the only way *we* could have produced that version; another writer in the
      same window cannot be told apart, which the record says;
    - ``rotated``: ours; the undo's own check-and-set refuses if someone wrote after us;
    - anything else: refused, a human compares the versions.
    """
    from technician_ops.errors import PastRunError

    path = past_state_file(step, state_dir, run_id)
    state = read_state(path)
    if state is None or state["status"] in (NOT_WRITTEN, ROLLED_BACK):
        return Recovery(step, path, state["status"] if state else None, "nothing")
    where = f"{state['mount']}/{state['path']}"
    old = int(state["old_version"])
    facts: dict[str, Any] = {"mount": state["mount"], "path": where, "key": state["key"], "from_version": old}
    if state["status"] == ROTATED:
        return Recovery(step, path, state["status"], "undo", facts={**facts, "new_version": state.get("new_version")})
    client = vault.connect(None)
    current = client.current_version(state["mount"], state["path"])
    facts["current_version"] = current
    if current == old:
        return Recovery(step, path, state["status"], "nothing", NOT_WRITTEN, facts)
    if current == old + 1:
        existed = False
        if old:
            try:
                client.read(vault.SecretRef(state["mount"], state["path"], state["key"]), version=old)
                existed = True
            except vault.VaultSecretNotFound:
                existed = False
        return Recovery(step, path, state["status"], "undo", ROTATED, {
            **facts, "new_version": current, "key_existed": existed,
            "attribution": f"by version number: the run recorded its intent at version {old} and died; "
                           f"version {current} is taken to be its write"})
    raise PastRunError(
        f"vault step {step}: {where} is at version {current}, the killed run recorded its intent at version {old}: "
        "more than one write happened since, which of them is ours cannot be told",
        hint=f"compare versions {old}..{current} of {where} and restore by hand; nothing was changed")


__all__ = [
    "Generator", "Recovery", "Undo", "VaultStepError", "check_access", "check_past_rollback", "converge",
    "describe", "dry_run", "read_state", "roll_back", "rotate", "state_file", "write_state",
]
