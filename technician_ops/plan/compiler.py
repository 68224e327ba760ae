"""plan: a runbook bound to parameters compiles to ONE Ansible playbook.

One play per step, in document order, inside a fresh ansible-runner private
data dir.  The rollback playbook is compiled later, from what actually
completed, so it targets exactly the hosts each step touched.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops import steps as kinds
from technician_ops.errors import Diagnostic, ParameterError, RunbookError
from technician_ops.plan.options import GATE_TAG, AnsibleOptions
from technician_ops.project import Project
from technician_ops.runbook.model import Runbook, Step
from technician_ops.runbook.params import bind
from technician_ops.runbook.refs import env_refs, jinja_refs
from technician_ops.steps.base import CompileContext, StepKind, standard_play, stop_play, uses_facts

_TEMPLATE_CHARS = frozenset("{}%#")  # what a rendered host pattern may not hold
UNDO_TASK_TIMEOUT = 600  # seconds per undo task unless the step sets timeout=
MAX_FORKS = 50


@dataclass(frozen=True)
class PlanStep:
    step: Step
    kind: StepKind
    hosts: str  # rendered host pattern ("localhost" for controller steps)
    undo: Step | None

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def has_undo(self) -> bool:
        return self.undo is not None or self.kind.has_auto_undo(self.step)


@dataclass(frozen=True)
class Plan:
    """Immutable: what will run, for which parameters, against which inventory."""

    runbook: Runbook
    project_root: Path
    params: dict[str, Any]
    steps: tuple[PlanStep, ...]
    check: bool = False
    inventory: tuple[Path, ...] = ()
    forks: int = field(default_factory=lambda: os.cpu_count() or 2)
    run_id: str = "compiled"
    state_dir: Path = Path(".technician-ops")
    options: AnsibleOptions = field(default_factory=AnsibleOptions)  # --limit, --tags, --diff, -e

    @property
    def secret_names(self) -> set[str]:
        """The secret parameters, and every public one whose value holds a secret's value (a DSN with the
        password pasted in): those are handled as secrets too, never written to a file."""
        declared = self.runbook.secret_names()
        values = [str(v) for k, v in self.params.items() if k in declared and v is not None and str(v)]
        if not values:
            return declared
        tainted = {k for k, v in self.params.items()
                   if k not in declared and isinstance(v, str) and any(s in v for s in values)}
        return declared | tainted

    @property
    def uses_facts(self) -> bool:
        """Whether any step, or any undo block, reads gathered facts (see ``uses_facts``)."""
        return any(uses_facts(ps.step) or (ps.undo is not None and uses_facts(ps.undo)) for ps in self.steps)

    @property
    def public_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in self.secret_names}

    @property
    def published(self) -> frozenset[str]:
        """Steps whose output a later step (or an undo) reads: only they publish it (runbook/refs.py)."""
        names = [ps.name for ps in self.steps]
        found: set[str] = set()
        for ps in self.steps:
            found.update(jinja_refs(ps.step.body), jinja_refs(ps.step.attrs.get("when", "")), env_refs(ps.step.body, names))
        return frozenset(found & set(names))

    def context(self, phase: str = "run", hosts: Any = None) -> CompileContext:
        extra = {"run_id": self.run_id, "state_dir": self.state_dir, "published": self.published,
                 "step_names": [ps.name for ps in self.steps]}
        return CompileContext(self.runbook, self.project_root, self.params, self.secret_names, self.check, phase, hosts, extra)

    def playbook(self) -> list[dict[str, Any]]:
        return [play for _, plays in self.playbook_parts() for play in plays]

    def playbook_parts(self) -> list[tuple[PlanStep, list[dict[str, Any]]]]:
        """Each step with its plays, in order (``playbook`` is their concatenation)."""
        tagged = bool(self.options.tags or self.options.skip_tags)
        return [(ps, [_tagged(play, ps, self.options) if tagged else play
                      for play in ps.kind.plays(ps.step, self.context("run", ps.hosts))]) for ps in self.steps]

    def participant_playbook(self, *, node: bool) -> list[dict[str, Any]]:
        """The playbook of one participant of a run spread over execution nodes (docs/nodes.md): every
        step's plays with a gate between consecutive steps, where each participant waits until the
        step has finished everywhere.  A node leaves the controller's steps (approve, terraform) to
        the controller, and waits at the gates around them all the same."""
        plays: list[dict[str, Any]] = []
        for i, (ps, step_plays) in enumerate(self.playbook_parts()):
            if i:
                plays.append(gate_play(i, "run"))
            if not (node and ps.kind.controller):
                plays.extend(step_plays)
        return plays

    def host_patterns(self, ps: PlanStep) -> list[str] | None:
        """The host patterns ``ps`` targets: its hosts, or for a kind that picks its own (a playbook),
        what its plays say (None: cannot tell before running)."""
        if ps.kind.controller:
            return []
        if ps.kind.own_hosts:
            return ps.kind.host_patterns(ps.step, self.project_root)
        return [ps.hosts]

    def rollback_playbook(self, completed: list[tuple[PlanStep, list[str]]],
                          stopped_hosts: list[str] | None = None, *, gates: bool = False) -> list[dict[str, Any]]:
        """Undo plays for ``completed`` (step, hosts it ran on), in reverse order.

        ``stopped_hosts``: hosts where a task was in flight when the run was stopped; what it left
        running there is killed first (``steps.base.stop_play``).  ``gates``: one participant's share of
        a run over execution nodes: a gate between consecutive undos (so an undo finishes everywhere
        before the one before it starts anywhere), and no play where this participant has no host.
        """
        plays: list[dict[str, Any]] = [stop_play(stopped_hosts, self.run_id)] if stopped_hosts else []
        for i, (ps, hosts) in enumerate(reversed(completed)):
            if gates and i:
                plays.append(gate_play(i, "rollback"))
            if not hosts:
                continue
            ctx = self.context("rollback", hosts)
            if ps.undo is not None:
                undo_kind = kinds.registry()[ps.undo.kind]
                undo_step = ps.undo
                if undo_step.hosts:  # an explicit hosts= on the undo block wins
                    ctx.hosts = render(undo_step.hosts, self.public_params, undo_step)
                tasks = undo_kind.tasks(undo_step, ctx)
                play_list = [standard_play(undo_kind, undo_step, ctx, tasks)]
            else:
                undo_step = ps.step
                play_list = [standard_play(ps.kind, ps.step, ctx, ps.kind.undo_tasks(ps.step, ctx))]
            for play in play_list:
                play["name"] = f"undo:{ps.name}"
                # An undo must not stop the other undos: a failed host is
                # rescued (the failure is still in the event stream) and
                # unreachable hosts do not leave later plays.
                play.pop("any_errors_fatal", None)
                play.pop("max_fail_percentage", None)
                play.pop("serial", None)
                play["ignore_unreachable"] = True
                block = play["tasks"][0]
                block.setdefault("timeout", UNDO_TASK_TIMEOUT)  # a hung host cannot hang the rollback
                block["rescue"] = [{"name": "undo failed", "ansible.builtin.set_fact": {"technician_ops_undo_failed": True}}]
                plays.append(play)
        return plays


GATE_PLAY = "technician-ops: gate"  # the name of a gate play: "technician-ops: gate PHASE INDEX"


def gate_play(index: int, phase: str) -> dict[str, Any]:
    """The barrier before a run's step ``index`` (or undo ``index``, newest first), for a run over execution
    nodes: its one task asks technician-ops, and waits, until every participant is there.  Told to stop
    (a participant failed or was lost, the run is stopping), the task fails and, fatal, ends the playbook
    here, as one playbook would have ended at the failing step."""
    return {"name": f"{GATE_PLAY} {phase} {index}", "hosts": "localhost", "gather_facts": False,
            "any_errors_fatal": True, "tags": [GATE_TAG],
            "tasks": [{"name": f"technician-ops: gate {index}",
                       "technician_ops_gate": {"index": index, "phase": phase}}]}


def _tagged(play: dict[str, Any], ps: PlanStep, options: AnsibleOptions) -> dict[str, Any]:
    """A step's play tagged with the step's name (``--tags NAME`` selects the step); a gate also ``always``.

    An ``import_playbook`` is tagged only when ``--tags``/``--skip-tags`` name the step: a tag there
    tags every play in it, and Ansible then gathers facts only for a selection naming that tag, so a
    selection by the playbook's own task tags would run its tasks without their facts.
    """
    if "import_playbook" in play:
        if ps.name not in (*options.tags, *options.skip_tags):
            return play
        return {**play, "tags": [ps.name, *[t for t in play.get("tags", []) if t != ps.name]]}
    return {**play, "tags": [ps.name, *([GATE_TAG] if ps.kind.gate else [])]}


def render(template: str, values: dict[str, Any], step: Step) -> str:
    """Render an attribute value with our sandbox (StrictUndefined)."""
    if "{" not in template:
        return template
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    try:
        return SandboxedEnvironment(undefined=StrictUndefined).from_string(template).render(values)
    except TemplateError as exc:
        raise RunbookError([Diagnostic(step_path(step), step.line, f"cannot render {template!r}: {exc}")]) from None


def step_path(step: Step) -> str:
    return "runbook"


def default_forks(targets: int, *, remote: bool, cpus: int | None = None) -> int:
    """Ansible's ``forks`` for a run whose project does not set it.

    Local-connection hosts get one worker per CPU: each task starts a fresh
    interpreter, CPU-bound, so more workers only queue (issue 9 measured one
    per CPU at 0.92x of forks 5; docs/performance.md has ours).  SSH hosts,
    and every host under mitogen (``remote``), get one worker per target up
    to 50: there a worker mostly waits, on the network or on mitogen's
    per-host interpreter (mitogen, 50 local hosts, 2 cores: ~17 s with 10 to
    50 forks, ~23 s with 2).
    """
    cpus = cpus or os.cpu_count() or 2
    return max(cpus, min(targets, MAX_FORKS)) if remote else cpus


def bind_plan(runbook: Runbook, project: Project, raw_params: dict[str, str], *, check: bool = False,
              environ: dict[str, str] | None = None, run_id: str = "compiled",
              options: AnsibleOptions | None = None) -> Plan:
    """The runbook bound to typed parameter values (``-p``, the environment, defaults), for ``project``."""
    plan = build_plan(runbook, project.root, bind(runbook.params, raw_params, environ), check=check,
                      inventory=project.inventory, run_id=run_id, state_dir=project.state_dir, forks=project.forks)
    return dataclasses.replace(plan, options=options) if options else plan


def build_plan(runbook: Runbook, project_root: Path, params: dict[str, Any], *, check: bool = False,
               inventory: tuple[Path, ...] = (), run_id: str = "compiled", state_dir: Path | None = None,
               forks: int | None = None) -> Plan:
    registry = kinds.registry()
    public = {k: v for k, v in params.items() if k not in runbook.secret_names()}
    steps = []
    for step in runbook.steps:
        kind = registry[step.kind]
        pattern = "localhost" if kind.controller else (step.hosts or runbook.hosts or "")
        try:
            hosts = render(pattern, public, step)
        except RunbookError as exc:
            raise RunbookError([Diagnostic(runbook.path, d.line, d.message) for d in exc.diagnostics]) from None
        if pattern != hosts and set(hosts) & _TEMPLATE_CHARS:
            # Ansible templates a play's hosts again: a value must not become a template there.
            raise ParameterError(f"{runbook.path}:{step.line}: step {step.name!r}: hosts {pattern!r} renders to "
                                 f"{hosts!r}, which holds template syntax: a parameter's value is a host "
                                 "pattern, never a template")
        steps.append(PlanStep(step, kind, hosts, runbook.undos.get(step.name)))
    return Plan(runbook, project_root, params, tuple(steps), check, inventory, forks or os.cpu_count() or 2,
                run_id=run_id, state_dir=state_dir or project_root / ".technician-ops")


