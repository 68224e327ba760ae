"""What our Ansible plugins may ask the engine over the control channel: approve, secret, emit."""

from __future__ import annotations

from typing import Any

from technician_ops.engine.request import Prompt
from technician_ops.errors import ApprovalMissing, ParameterError
from technician_ops.events import Bus, Kind
from technician_ops.plan.compiler import Plan


class Approvals:
    """``approve`` steps: answered by ``--approve STEP``, ``--yes``, the operator at a terminal, or
    ``approver``: the user who released a held run (``approve RUN_ID``), recorded by name."""

    def __init__(self, plan: Plan, approve: tuple[str, ...], yes: bool, prompt: Prompt | None, bus: Bus,
                 approver: str | None = None) -> None:
        self.plan, self.approve, self.yes, self.prompt, self.bus = plan, approve, yes, prompt, bus
        self.approver = approver
        self.given: dict[str, str] = {}

    def precheck(self) -> None:
        """Fail before anything runs when an approval cannot be had."""
        unknown = [a for a in self.approve if a not in {s.name for s in self.plan.steps}]
        if unknown:
            raise ParameterError(f"--approve names no step: {', '.join(unknown)}")
        if self.plan.check:
            return
        missing = [ps.name for ps in self.plan.steps if ps.kind.asks_operator and not self._pre(ps.name)]
        if missing and self.prompt is None:
            raise ApprovalMissing(
                f"step(s) {', '.join(missing)} need approval and there is no terminal to ask",
                hint="pass --yes, or --approve " + " --approve ".join(missing),
            )

    def _pre(self, step: str) -> str | None:
        if self.approver is not None:
            return "release"  # a held run released by ``approve RUN_ID``: the approver is named as user
        if step in self.approve:
            return "--approve"
        if self.yes:
            return "--yes"
        return None

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        step = request.get("step", "")
        # A dry run changes nothing, so it needs nobody's approval: the gate is passed and recorded as such.
        by = "--check" if self.plan.check else self._pre(step)
        approved = by is not None
        if not approved and self.prompt is not None:
            ps = next((p for p in self.plan.steps if p.name == step), None)
            approved = bool(self.prompt(step, ps.step.spec if ps else ""))
            by = "terminal"
        self.bus.emit(Kind.APPROVAL, step=step, approved=approved, by=by or "none", user=self.approver or user())
        if approved:
            self.given[step] = by or ""
        return {"ok": True, "approved": approved, "by": by}


class Emitter:
    """Lets our action plugins add events (artifacts: backups, secret versions, plans) to the stream."""

    ALLOWED = {"artifact": Kind.ARTIFACT, "notice": Kind.NOTICE}

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = self.ALLOWED.get(str(request.get("kind")))
        data = request.get("data")
        if kind is None or not isinstance(data, dict):
            return {"ok": False, "error": "emit takes kind artifact|notice and a data object"}
        self.bus.emit(kind, **data)
        return {"ok": True}


class Secrets:
    """A secret's value, to our lookup plugin, at the moment a task uses it."""

    def __init__(self, plan: Plan) -> None:
        self.values = {name: plan.params[name] for name in plan.secret_names if plan.params.get(name) is not None}

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("name")
        if name not in self.values:
            return {"ok": False, "error": "no value was given for this secret"}
        return {"ok": True, "value": str(self.values[name])}


def user() -> str:
    from technician_ops.engine.origin import operator

    return str(operator()["user"])


class Environ:
    """The credentials withheld from the execution's environment (``engine/environ.py``), for our own
    controller plugins only: they ask with the run's control token.  Never to an execution node: the
    controller's credentials stay on the controller (its plugins run there only)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("participant", "local") != "local":
            return {"ok": True, "values": {}}
        return {"ok": True, "values": dict(self.values)}
