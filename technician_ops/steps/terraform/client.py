"""Terraform, driven from the controller for the ``terraform`` step kind.

One module owns every terraform invocation so the traps of the wrapper we
build on (python-terraform 0.10.1) are handled in one place:

* its ``destroy()`` passes ``-force``, which terraform removed in 0.15: we
  never call it; a destroy is ``plan -destroy -out=FILE`` plus an apply of
  exactly that saved plan, so the operator sees what will go;
* its ``plan()`` passes ``-detailed-exitcode``: exit 2 means "there are
  changes", not failure;
* its ``cmd()`` hands terraform the *whole* process environment (our
  VAULT_TOKEN included) or none at all, and logs command output (which for
  ``show -json`` / ``output -json`` contains sensitive values) at debug
  level.  We override ``cmd()`` to run with a filtered environment and to log
  nothing but the command line, and we write variables to our own 0600 file
  instead of letting the wrapper log them.

The flow of a step: ``init -input=false``; ``plan -out=FILE``; a summary from
``terraform show -json FILE`` (resource addresses to add / change / destroy);
then ``apply FILE`` with ``-lock-timeout``.  ``--check`` stops after the
plan.  A state lock held by another terraform raises :class:`TerraformLocked`
(exit code TEMPFAIL: retry later).

The undo ``rollback: previous`` re-applies the variables of the last
successful apply of the same module; :func:`remember_apply` and
:func:`previous_apply` keep them in a small JSON file the caller places in
its state directory.  Saga discipline: read ``previous_apply`` *before*
applying (that is the undo data), apply, then ``remember_apply``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ConfigError, ExitCode, NotFound, TechnicianOpsError

log = logging.getLogger(__name__)

TERRAFORM_BIN = "terraform"
"""Binary looked up on PATH; override per module with ``terraform_bin``."""

# ---------------------------------------------------------------------------
# errors


class TerraformError(TechnicianOpsError):
    """A terraform command exited non-zero.  Like invoke's UnexpectedExit, it
    names the command, its exit code and the tail of stderr, so the operator
    can act without re-running anything."""

    exit_code = ExitCode.FAILED

    def __init__(self, command: list[str], returncode: int, stderr: str, *, hint: str | None = None) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr_tail = _tail(stderr)
        message = f"terraform command failed (exit {returncode}): {' '.join(command)}"
        if self.stderr_tail:
            message += "\n" + self.stderr_tail
        super().__init__(message, hint=hint)


class TerraformLocked(TechnicianOpsError):
    """Another terraform holds the state lock.  Nothing was changed by us;
    retrying once the other run ends is safe."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, module: Path, command: list[str], stderr: str) -> None:
        self.module = module
        self.command = list(command)
        self.stderr_tail = _tail(stderr)
        lock_id = _LOCK_ID.search(stderr)
        who = _LOCK_WHO.search(stderr)
        detail = ""
        if lock_id:
            detail += f" (lock ID {lock_id.group(1)}"
            detail += f", held by {who.group(1).strip()})" if who else ")"
        super().__init__(
            f"terraform state of {module} is locked by another operation{detail}",
            hint="wait for the other terraform run to finish and retry; if it died, "
            "`terraform force-unlock LOCK_ID` in that module releases the lock",
        )


_LOCK_MARKER = "Error acquiring the state lock"
_LOCK_ID = re.compile(r"^\s*ID:\s*(\S+)", re.MULTILINE)
_LOCK_WHO = re.compile(r"^\s*Who:\s*(.+)$", re.MULTILINE)
# terraform's "Warning: Unable to open CLI configuration file" and friends are
# noise in an error message; keep the last lines that carry the error.
_TAIL_LINES = 20


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------------
# environment

#: Names dropped from terraform's environment: credentials of technician-ops
#: itself (its Vault/OpenBao token, its audit database password, Ansible vault
#: passwords).  Terraform and its providers never need them; a module that
#: really talks to Vault gets its token passed explicitly through ``env=``.
ENV_DENY_PREFIXES: tuple[str, ...] = (
    "VAULT_",  # VAULT_TOKEN, VAULT_ADDR, ... of our vault step
    "BAO_",  # the same for OpenBao
    "TECHNICIAN_OPS_",  # our own configuration (audit URL may hold a password)
    "ANSIBLE_VAULT_",  # ANSIBLE_VAULT_PASSWORD_FILE and friends
    "ANSIBLE_BECOME_PASS",
    "PGPASSWORD",  # libpq password our postgres audit store / backup may use
    "TF_LOG",  # TF_LOG=trace prints variable values into stderr, which we quote in errors
)
#: Names dropped exactly (not as a prefix).
ENV_DENY_EXACT: frozenset[str] = frozenset({"PGPASSFILE", "PGSERVICEFILE"})


def filtered_env(environ: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment terraform runs with.

    A denylist, not an allowlist, on purpose: providers read credentials from
    names nobody can enumerate (AWS_*, GOOGLE_*, ARM_*, OS_*, KUBECONFIG,
    HCLOUD_TOKEN, ...) and a production tool must not break them.  What goes
    is what is *ours* (see ``ENV_DENY_PREFIXES``/``ENV_DENY_EXACT``).
    ``extra`` is added after filtering, so a caller can hand one module a
    secret deliberately.  ``TF_IN_AUTOMATION=1`` and ``TF_INPUT=0`` are
    always set: terraform must never wait for a prompt nobody will answer.
    """
    source = os.environ if environ is None else environ
    env = {
        k: v
        for k, v in source.items()
        if k not in ENV_DENY_EXACT and not any(k.startswith(p) for p in ENV_DENY_PREFIXES)
    }
    if extra:
        env.update(extra)
    env["TF_IN_AUTOMATION"] = "1"
    env["TF_INPUT"] = "0"
    return env


# ---------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PlanSummary:
    """What a saved plan would do, as the audit record shows it.

    ``variables`` holds only non-sensitive values: it is recorded and may be
    remembered for ``rollback: previous``; sensitive variables are named in
    ``sensitive_variables`` and must be supplied again by the caller.
    A replaced resource appears in ``adds`` and ``destroys`` (terraform's own
    "N to add, M to destroy" arithmetic) and in ``replaces``.
    """

    plan_file: Path
    adds: list[str]
    changes: list[str]
    destroys: list[str]
    replaces: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    sensitive_variables: list[str] = field(default_factory=list)
    outputs_after: dict[str, Any] = field(default_factory=dict)
    destroy: bool = False
    workspace: str | None = None

    @property
    def has_changes(self) -> bool:
        return bool(self.adds or self.changes or self.destroys)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form for the audit record's ``terraform_plan`` artifact."""
        return {
            "plan_file": str(self.plan_file),
            "adds": self.adds,
            "changes": self.changes,
            "destroys": self.destroys,
            "replaces": self.replaces,
            "variables": self.variables,
            "sensitive_variables": self.sensitive_variables,
            "outputs_after": self.outputs_after,
            "destroy": self.destroy,
            "workspace": self.workspace,
            "has_changes": self.has_changes,
        }


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of applying one saved plan: non-sensitive outputs only."""

    plan: PlanSummary
    outputs: dict[str, Any]
    sensitive_outputs: list[str]
    duration: float


# ---------------------------------------------------------------------------
# the wrapper


def _wrapper_class() -> type:
    """python-terraform's Terraform with ``cmd`` replaced.

    Imported lazily: the package is only needed where a terraform step runs.
    We keep its option rendering (``generate_cmd_string``) and its command
    methods, and replace the process launch: filtered env, no output logging,
    no state-file re-reading.
    """
    from python_terraform import Terraform

    class _Terraform(Terraform):
        def __init__(self, working_dir: str, env: dict[str, str], terraform_bin: str) -> None:
            # state=None makes the base class read ./terraform.tfstate; harmless.
            super().__init__(working_dir=working_dir, terraform_bin_path=terraform_bin)
            self._env = env
            self.last_command: list[str] = []

        def cmd(self, cmd: str, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
            kwargs.pop("capture_output", None)
            kwargs.pop("raise_on_error", None)
            kwargs.pop("synchronous", None)
            try:
                command = self.generate_cmd_string(cmd, *args, **kwargs)
                self.last_command = command
                log.debug("terraform: %s (in %s)", " ".join(command), self.working_dir)
                proc = subprocess.run(
                    command,
                    cwd=self.working_dir,
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    check=False,
                )
            finally:
                self.temp_var_files.clean_up()
            return proc.returncode, proc.stdout, proc.stderr

    return _Terraform


class TerraformModule:
    """One terraform root module (a directory of the runbook repo) in one workspace.

    ``env`` is the full environment terraform gets; by default
    :func:`filtered_env` of ours.  The workspace is selected per command with
    ``TF_WORKSPACE`` rather than ``terraform workspace select``, so no
    selection is persisted in the module directory and two runs on
    different workspaces of one module cannot flip each other's choice.
    """

    def __init__(
        self,
        dir: Path,
        workspace: str | None = None,
        env: Mapping[str, str] | None = None,
        lock_timeout: str = "30s",
        terraform_bin: str = TERRAFORM_BIN,
    ) -> None:
        self.dir = Path(dir)
        if not self.dir.is_dir():
            raise NotFound(f"terraform module directory {self.dir} does not exist")
        self.workspace = workspace
        self.lock_timeout = lock_timeout
        base = filtered_env() if env is None else dict(env)
        base["TF_IN_AUTOMATION"] = "1"
        base["TF_INPUT"] = "0"
        if workspace:
            base["TF_WORKSPACE"] = workspace
        else:
            base.pop("TF_WORKSPACE", None)
        self._tf = _wrapper_class()(str(self.dir), base, terraform_bin)

    # -- plumbing ---------------------------------------------------------

    def _run(self, method: str, *args: Any, ok: tuple[int, ...] = (0,), **kwargs: Any) -> tuple[int, str, str]:
        rc, out, err = getattr(self._tf, method)(*args, **kwargs)
        if rc not in ok:
            command = self._tf.last_command
            if _LOCK_MARKER in err:
                raise TerraformLocked(self.dir, command, err)
            raise TerraformError(command, rc, err)
        return rc, out, err

    @contextmanager
    def _var_file(self, variables: Mapping[str, Any]) -> Iterator[Path]:
        """Variables go through a 0600 JSON file in a private temp dir, never the
        command line (visible in ps) nor the wrapper's debug log."""
        with tempfile.TemporaryDirectory(prefix="techops-tfvars-") as tmp:
            path = Path(tmp) / "vars.tfvars.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(dict(variables), fh)
            yield path

    # -- commands ---------------------------------------------------------

    def init(self) -> None:
        """``terraform init -input=false``; creates the workspace if it is new."""
        # python-terraform defaults to -reconfigure, which silently drops a
        # configured backend's migration prompt: we do not want that.
        from python_terraform import IsNotFlagged

        self._run("init", reconfigure=IsNotFlagged, var=None, lock_timeout=self.lock_timeout)

    def plan(self, variables: Mapping[str, Any], out: Path, destroy: bool = False) -> PlanSummary:
        """``plan -out=FILE``, then the summary from ``show -json FILE``.

        The plan file holds every variable value in clear text, sensitive ones
        included: it is written 0600 and the caller should keep it in a
        private directory and delete it after the apply.
        """
        from python_terraform import IsFlagged, IsNotFlagged

        out = Path(out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        with self._var_file(variables) as var_file:
            self._run(
                "plan",
                ok=(0, 2),  # -detailed-exitcode: 2 = changes present
                out=str(out),
                var=None,
                var_file=str(var_file),
                lock_timeout=self.lock_timeout,
                destroy=IsFlagged if destroy else IsNotFlagged,
            )
        os.chmod(out, 0o600)
        return self._summarise(out, destroy)

    def show_plan(self, plan_file: Path) -> dict[str, Any]:
        """The raw ``terraform show -json`` document.  Contains secrets: do not record it."""
        from python_terraform import IsFlagged

        _, out, _ = self._run("show_cmd", str(plan_file), json=IsFlagged, var=None)
        result: dict[str, Any] = json.loads(out)
        return result

    def _summarise(self, plan_file: Path, destroy: bool) -> PlanSummary:
        doc = self.show_plan(plan_file)
        adds: list[str] = []
        changes: list[str] = []
        destroys: list[str] = []
        replaces: list[str] = []
        for rc in doc.get("resource_changes", []):
            actions = rc.get("change", {}).get("actions", [])
            address = rc["address"]
            if "create" in actions and "delete" in actions:
                replaces.append(address)
                adds.append(address)
                destroys.append(address)
            elif "create" in actions:
                adds.append(address)
            elif "update" in actions:
                changes.append(address)
            elif "delete" in actions:
                destroys.append(address)
        declared = doc.get("configuration", {}).get("root_module", {}).get("variables", {})
        sensitive = sorted(name for name, spec in declared.items() if spec.get("sensitive"))
        variables = {
            name: spec.get("value") for name, spec in doc.get("variables", {}).items() if name not in sensitive
        }
        outputs_after: dict[str, Any] = {}
        for name, change in doc.get("output_changes", {}).items():
            if change.get("after_sensitive") or change.get("after_unknown"):
                continue
            outputs_after[name] = change.get("after")
        return PlanSummary(
            plan_file=plan_file,
            adds=adds,
            changes=changes,
            destroys=destroys,
            replaces=replaces,
            variables=variables,
            sensitive_variables=sensitive,
            outputs_after=outputs_after,
            destroy=destroy,
            workspace=self.workspace,
        )

    def apply(self, plan: PlanSummary) -> ApplyResult:
        """Apply exactly the saved plan: no re-plan, no variables, no prompt.

        A plan made stale by another apply in between is refused by terraform
        ("Saved plan is stale"); that surfaces as :class:`TerraformError`.
        """
        start = time.monotonic()
        self._run(
            "apply",
            str(plan.plan_file),
            var=None,
            lock_timeout=self.lock_timeout,
        )
        outputs, sensitive = self._outputs()
        return ApplyResult(plan=plan, outputs=outputs, sensitive_outputs=sensitive, duration=time.monotonic() - start)

    def _outputs(self) -> tuple[dict[str, Any], list[str]]:
        from python_terraform import IsFlagged

        _, out, _ = self._run("output_cmd", json=IsFlagged, var=None)
        raw: dict[str, Any] = json.loads(out or "{}")
        values = {k: v.get("value") for k, v in raw.items() if not v.get("sensitive")}
        sensitive = sorted(k for k, v in raw.items() if v.get("sensitive"))
        return values, sensitive

    def outputs(self) -> dict[str, Any]:
        """Current non-sensitive outputs (``terraform output -json``)."""
        return self._outputs()[0]

    def destroy(self, variables: Mapping[str, Any], out: Path) -> ApplyResult:
        """``plan -destroy -out=FILE`` + apply of that plan (never ``destroy -force``)."""
        return self.apply(self.plan(variables, out=out, destroy=True))


# ---------------------------------------------------------------------------
# "rollback: previous": the variables of the last successful apply

_HISTORY_KEEP = 20


def _load_history(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"version": 1, "modules": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read terraform apply history {path}: {exc}") from exc
    data.setdefault("modules", {})
    return data


def remember_apply(path: Path, module_key: str, variables: Mapping[str, Any], run_id: str | None = None) -> None:
    """Record the (non-sensitive) variables of a successful apply.

    ``module_key`` identifies module + workspace (e.g. ``"infra/app@blue"``).
    Written atomically (temp file + rename, 0600) so a killed run never
    leaves a half-written history.
    """
    path = Path(path)
    data = _load_history(path)
    entries: list[dict[str, Any]] = data["modules"].setdefault(module_key, [])
    entries.append({"variables": dict(variables), "run_id": run_id, "applied_at": time.time()})
    del entries[:-_HISTORY_KEEP]
    _save_history(path, data)


def forget_apply(path: Path, module_key: str, run_id: str) -> None:
    """Drop the entries ``run_id`` wrote for ``module_key`` (its apply was undone)."""
    path = Path(path)
    data = _load_history(path)
    entries = data["modules"].get(module_key) or []
    data["modules"][module_key] = [e for e in entries if e.get("run_id") != run_id]
    _save_history(path, data)


def _save_history(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temp file, fsync, rename; mode 0600 from mkstemp)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tfhistory-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def previous_apply(path: Path, module_key: str) -> dict[str, Any] | None:
    """Variables of the most recent successful apply of ``module_key``, or None.

    Read it *before* applying: it is the undo data of the step.  None means
    the module was never applied by us; the undo is then a destroy.
    """
    entries = _load_history(Path(path))["modules"].get(module_key) or []
    if not entries:
        return None
    last: dict[str, Any] = entries[-1]["variables"]
    return last
