"""Controller-side work of the ``terraform`` step, called by its action plugin.

The flow of a step (``kinds/terraform.py`` compiles to one action task):
``init``; ``plan -out`` into the run's private dir; a ``terraform_plan``
artifact (resource addresses to add / change / destroy, and the variables of
the previous apply -- the undo data); in ``--check`` or ``action: plan`` stop
there; else apply exactly that plan, remember its (non-sensitive) variables
in ``<state_dir>/terraform-applies.json`` and add a ``terraform_apply``
artifact with the non-sensitive outputs.

Undo ``rollback: previous``: re-apply the variables of the apply before this
run's (the history entry preceding the one this run wrote), or destroy when
this run's apply was the first; then drop this run's entry from the history,
so the history again says what is applied.

Plan files hold every variable value in clear text: they live in the 0700
run dir and are deleted as soon as they are applied or summarised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.steps.terraform.client import forget_apply as _forget_apply
from technician_ops.steps.terraform.client import (
    ApplyResult,
    PlanSummary,
    TerraformModule,
    _load_history,
    previous_apply,
    remember_apply,
)

HISTORY_FILE = "terraform-applies.json"
ACTIONS = ("apply", "plan", "destroy")

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TerraformStep:
    """One terraform step, its variables already rendered with the run's parameters."""

    step: str
    module: str  # as written in the runbook, relative to the project root: the history key
    module_dir: Path
    variables: dict[str, Any] = field(default_factory=dict)
    action: str = "apply"
    workspace: str | None = None
    lock_timeout: str = "30s"

    @property
    def key(self) -> str:
        return f"{self.module}@{self.workspace or 'default'}"

    def open(self) -> TerraformModule:
        return TerraformModule(self.module_dir, workspace=self.workspace, lock_timeout=self.lock_timeout)


def history_path(state_dir: Path) -> Path:
    return Path(state_dir) / HISTORY_FILE


def _plan_file(state_dir: Path, run_id: str, name: str) -> Path:
    directory = Path(state_dir) / "runs" / run_id / "terraform"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory / f"{name}.tfplan"


def _plan_record(ts: TerraformStep, plan: PlanSummary, **extra: Any) -> dict[str, Any]:
    summary = f"{ts.module}: +{len(plan.adds)} ~{len(plan.changes)} -{len(plan.destroys)}"
    return {"type": "terraform_plan", "step": ts.step, "module": ts.module, "workspace": ts.workspace,
            "adds": plan.adds, "changes": plan.changes, "destroys": plan.destroys, "replaces": plan.replaces,
            "destroy": plan.destroy, "summary": summary, **extra}


def _apply_record(ts: TerraformStep, result: ApplyResult, **extra: Any) -> dict[str, Any]:
    return {"type": "terraform_apply", "step": ts.step, "module": ts.module, "workspace": ts.workspace,
            "outputs": result.outputs, "sensitive_outputs": result.sensitive_outputs,
            "duration": round(result.duration, 3), "summary": f"{ts.module} outputs {json.dumps(result.outputs, sort_keys=True)}",
            **extra}


def _plan_and_apply(mod: TerraformModule, variables: Mapping[str, Any], out: Path, *, destroy: bool,
                    apply: bool, before_apply: Callable[[PlanSummary], None]) -> tuple[PlanSummary, ApplyResult | None]:
    try:
        plan = mod.plan(variables, out=out, destroy=destroy)
        before_apply(plan)
        return plan, (mod.apply(plan) if apply else None)
    finally:
        out.unlink(missing_ok=True)


def run_step(ts: TerraformStep, state_dir: Path, run_id: str, *, check: bool, emit: Emit) -> dict[str, Any]:
    """Plan (and unless ``check`` or ``action: plan``, apply) one terraform step.

    Returns the Ansible result fields.  Raises TerraformError/TerraformLocked.
    """
    if ts.action not in ACTIONS:
        raise ValueError(f"terraform action must be one of {', '.join(ACTIONS)}, not {ts.action!r}")
    history = history_path(state_dir)
    previous = previous_apply(history, ts.key)  # read before applying: it is the undo data
    apply = not check and ts.action != "plan"
    mod = ts.open()
    mod.init()
    plan, result = _plan_and_apply(
        mod, ts.variables, _plan_file(state_dir, run_id, ts.step), destroy=ts.action == "destroy", apply=apply,
        before_apply=lambda p: emit(_plan_record(ts, p, action=ts.action, check=check, previous_apply=previous)),
    )
    if result is None:
        return {"changed": False, "msg": f"terraform plan of {ts.module}: +{len(plan.adds)} ~{len(plan.changes)} "
                f"-{len(plan.destroys)}" + (" (check mode: not applied)" if check else ""),
                "adds": plan.adds, "changes": plan.changes, "destroys": plan.destroys}
    if ts.action == "apply":
        remember_apply(history, ts.key, plan.variables, run_id)
    emit(_apply_record(ts, result, action=ts.action))
    return {"changed": plan.has_changes, "msg": f"terraform {ts.action} of {ts.module} done", "outputs": result.outputs}


def run_history(state_dir: Path, key: str, run_id: str) -> tuple[bool, dict[str, Any] | None, dict[str, Any] | None]:
    """(this run applied?, variables before this run's apply, variables of this run's apply)."""
    entries: list[dict[str, Any]] = _load_history(history_path(state_dir))["modules"].get(key) or []
    mine = [i for i, e in enumerate(entries) if e.get("run_id") == run_id]
    if not mine:
        return False, (entries[-1]["variables"] if entries else None), None
    first = mine[0]
    before = entries[first - 1]["variables"] if first > 0 else None
    return True, before, entries[mine[-1]]["variables"]


def forget_apply(state_dir: Path, key: str, run_id: str) -> None:
    """Drop the history entries ``run_id`` wrote for ``key`` (its apply was undone)."""
    _forget_apply(history_path(state_dir), key, run_id)


def undo_step(ts: TerraformStep, state_dir: Path, run_id: str, *, emit: Emit) -> dict[str, Any]:
    """``rollback: previous``: put back what was applied before this run.

    ``ts.variables`` are the step's variables rendered again at rollback
    time; they supply what the history cannot hold (sensitive variables)
    and are overridden by the remembered previous values.
    """
    if ts.action == "plan":
        return {"changed": False, "msg": "a plan changes nothing: nothing to undo"}
    applied, before, mine = run_history(state_dir, ts.key, run_id)
    if ts.action == "apply" and not applied:
        return {"changed": False, "msg": f"this run recorded no apply of {ts.module}: nothing to undo"}
    if ts.action == "destroy" and before is None:
        return {"failed": True, "msg": f"cannot undo the destroy of {ts.module}: no earlier apply is recorded "
                f"in {history_path(state_dir)}; re-create it with a run that applies it"}
    mod = ts.open()
    mod.init()
    out = _plan_file(state_dir, run_id, f"{ts.step}.undo")
    if before is not None:
        variables = {**ts.variables, **before}
        plan, result = _plan_and_apply(mod, variables, out, destroy=False, apply=True,
                                       before_apply=lambda p: emit(_plan_record(ts, p, action="rollback-previous")))
        how = "re-applied the previous variables"
    else:
        variables = {**ts.variables, **(mine or {})}
        plan, result = _plan_and_apply(mod, variables, out, destroy=True, apply=True,
                                       before_apply=lambda p: emit(_plan_record(ts, p, action="rollback-destroy")))
        how = "destroyed what this run created (there was no earlier apply)"
    assert result is not None
    if applied:
        forget_apply(state_dir, ts.key, run_id)
    emit(_apply_record(ts, result, action="rollback"))
    return {"changed": plan.has_changes, "msg": f"terraform {ts.module}: {how}", "outputs": result.outputs}
