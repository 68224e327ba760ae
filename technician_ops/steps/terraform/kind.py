"""``terraform``: plan and apply a terraform module of the project, from the controller.

Body::

    module: terraform/app          # directory, relative to the project root
    vars: {app_version: "{{ version }}"}   # values may use the run's parameters
    action: apply                  # apply (default) | plan | destroy
    workspace: blue                # optional
    lock_timeout: 30s              # optional
    rollback: previous             # optional: automatic undo, see below

Compiled to the ``technician_ops_terraform`` action plugin on localhost; the
variables are passed as task arguments, so Ansible renders their templates
with the run's parameters.  Under ``--check`` the step plans and stops: the
plan summary goes into the audit record and the state is untouched.

Undo: with ``rollback: previous`` the undo re-applies the variables of the
apply before this run's (or destroys what this run created if it was the
first).  Otherwise write an explicit ``{rollback=NAME}`` block (for example
another terraform block).  A step with neither has no undo: lint warns
(an error with ``--strict``) and a rollback reports it as not undone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.steps.base import BodyError, CompileContext, StepKind, load_yaml_body

_KEYS = {"module", "vars", "action", "workspace", "lock_timeout", "rollback"}
_ACTIONS = ("apply", "plan", "destroy")


class TerraformKind(StepKind):
    name = "terraform"
    quiet = True
    controller = True
    # Whether a step really has an automatic undo (``rollback: previous``)
    # is decided per step in has_auto_undo.
    auto_undo = True

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        spec = load_yaml_body(body)
        if not isinstance(spec, dict) or not spec.get("module"):
            raise BodyError("terraform step body must be a mapping with 'module: DIR' (relative to the project root)")
        unknown = set(spec) - _KEYS
        if unknown:
            raise BodyError(f"unknown key(s) in terraform step: {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(_KEYS))})")
        module = str(spec["module"])
        path = (project_root / module).resolve()
        if path != project_root.resolve() and project_root.resolve() not in path.parents:
            raise BodyError(f"terraform module {module!r} is outside the project")
        if not path.is_dir():
            raise BodyError(f"terraform module directory {module!r} not found under {project_root}")
        variables = spec.get("vars") or {}
        if not isinstance(variables, dict):
            raise BodyError("terraform 'vars' must be a mapping of variable name to value")
        action = str(spec.get("action", "apply"))
        if action not in _ACTIONS:
            raise BodyError(f"terraform 'action' must be one of {', '.join(_ACTIONS)}, not {action!r}")
        rollback = spec.get("rollback")
        if rollback not in (None, "previous"):
            raise BodyError(f"terraform 'rollback' can only be 'previous' (or leave it out and write a "
                            f"{{rollback=NAME}} block), not {rollback!r}")
        out: dict[str, Any] = {"module": module, "vars": dict(variables), "action": action,
                               "lock_timeout": str(spec.get("lock_timeout", "30s")), "rollback": rollback}
        if spec.get("workspace"):
            out["workspace"] = str(spec["workspace"])
        return out

    def changes_things(self, step: Step) -> bool:
        return bool(step.spec["action"] != "plan")

    def _args(self, step: Step, ctx: CompileContext) -> dict[str, Any]:
        spec = step.spec
        args = {"step": step.name, "module": spec["module"], "module_dir": str((ctx.project_root / spec["module"]).resolve()),
                "vars": dict(spec["vars"]), "action": spec["action"], "lock_timeout": spec["lock_timeout"]}
        if spec.get("workspace"):
            args["workspace"] = spec["workspace"]
        return args

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        return [{"name": f"terraform {step.spec['action']}: {step.spec['module']}",
                 "technician_ops_terraform": self._args(step, ctx)}]

    def has_auto_undo(self, step: Step) -> bool:
        # Only `rollback: previous` is an undo; otherwise lint asks for a
        # {rollback=NAME} block like any other mutating step.
        return step.spec.get("rollback") == "previous" or step.spec["action"] == "plan"

    def undo_tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        if step.spec["action"] == "plan":
            return [{"name": "terraform plan: nothing to undo", "ansible.builtin.debug": {"msg": "a plan changes nothing"}}]
        if step.spec.get("rollback") != "previous":
            return [{"name": f"terraform {step.spec['module']}: no undo",
                     "ansible.builtin.fail": {"msg": f"step {step.name!r} has no undo: add 'rollback: previous' to its "
                                                     f"body or a {{rollback={step.name}}} block; the module is left as applied"}}]
        return [{"name": f"undo terraform {step.spec['action']}: {step.spec['module']} (rollback: previous)",
                 "technician_ops_terraform": {**self._args(step, ctx), "undo": True}}]


KIND = TerraformKind()
