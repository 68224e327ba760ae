"""The saga: which steps to undo, on which hosts, and the undo execution.

A failing run undoes its completed steps newest first (``roll_back``);
``rollback RUN_ID`` and ``recover RUN_ID`` run the same undo plays for an
earlier run (``run_undo``).  Both read step state as ``state.StepState``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from technician_ops.engine.executor import StepTracker, execute
from technician_ops.engine.session import Context
from technician_ops.events import Kind
from technician_ops.outcomes import Outcome
from technician_ops.plan.compiler import Plan, PlanStep
from technician_ops.plan.files import write_undo_playbook
from technician_ops.plan.options import cmdline
from technician_ops.state import HostStatus, StepState, StepStatus

Completed = list[tuple[PlanStep, list[str]]]  # (step, the hosts its undo runs on), in run order


@dataclass
class Selection:
    """What undoing a run takes, decided from its step states (docs/undo.md)."""

    completed: Completed = field(default_factory=list)  # (step, hosts) whose undo runs, in run order
    missing: list[dict[str, Any]] = field(default_factory=list)  # {step, host, error}: changed, cannot be undone
    declared: list[dict[str, Any]] = field(default_factory=list)  # {step, hosts, undo}: undo=none / undo=backup:NAME

    @property
    def changed_anything(self) -> bool:
        return bool(self.completed or self.missing or self.declared)


def select(plan: Plan, states: dict[str, StepState], order: list[str], *, dead: Collection[str] = (),
           lost: dict[str, str] | None = None) -> Selection:
    """Every step that may have changed something, on exactly the hosts where it may have.

    A step that finished is undone where a task reported a change (or hid whether it did); a step
    that failed or was stopped inside, on those hosts too, failed ones included (its kind decides:
    ``StepKind.undo_hosts``).  ``undo=none`` declares there is nothing to undo; ``undo=backup:NAME``
    that backup NAME's restore is the undo, on hosts NAME covers.  A host in ``dead`` (unreachable
    during the run) is reported, never retried: an SSH attempt to a vanished host can hang.
    """
    out = Selection()
    by_name = {ps.name: ps for ps in plan.steps}
    for name in order:
        state = states[name]
        ps = by_name.get(name)
        if ps is None:  # a past run's step the runbook no longer has
            if state.changed_hosts:
                out.missing.append({"step": name, "host": ",".join(state.changed_hosts),
                                    "error": "changed things and is no longer in the runbook"})
            continue
        if not ps.kind.mutating:
            continue
        failed = state.status is not StepStatus.SUCCEEDED
        hosts = ps.kind.undo_hosts(ps.step, state, failed=failed)
        if not hosts:
            continue
        declared = ps.step.attrs.get("undo")
        if declared == "none":
            out.declared.append({"step": name, "hosts": hosts, "undo": "none"})
            continue
        for host in sorted(set(hosts).intersection(dead)):
            node = (lost or {}).get(host)
            if node is not None:
                out.missing.append({"step": name, "host": host, "node": node,
                                    "error": f"execution node {node} was lost mid-run: not rolled back"})
            else:
                out.missing.append({"step": name, "host": host,
                                    "error": "host unreachable during the run: not rolled back"})
        hosts = [h for h in hosts if h not in dead]
        if not hosts:
            continue
        if declared and declared.startswith("backup:"):
            out.declared.append({"step": name, "hosts": hosts, "undo": declared})
        elif ps.has_undo:
            out.completed.append((ps, hosts))
        else:
            out.missing.append({"step": name, "host": ",".join(hosts), "error": "step changed things and has no undo"})
    restored = {ps.name: set(hosts) for ps, hosts in out.completed}
    for item in out.declared:
        if item["undo"].startswith("backup:"):
            backup = item["undo"].split(":", 1)[1]
            for host in item["hosts"]:
                if host not in restored.get(backup, set()):
                    out.missing.append({"step": item["step"], "host": host,
                                        "error": f"undo=backup:{backup}, but backup {backup} has nothing to restore here"})
    return out


def roll_back(ctx: Context, tracker: StepTracker) -> tuple[Outcome, dict[str, Any]]:
    """Undo what a failing (or stopped) run may have changed, newest first, as a second execution.

    ``failed`` (exit 1) only when nothing changed anywhere.
    """
    if ctx.plan.check:
        return Outcome.FAILED, {}
    dead = {h for run in tracker.steps.values() for h, a in run.hosts.items() if a.status is HostStatus.UNREACHABLE}
    lost: dict[str, str] = getattr(tracker, "lost", {})  # host -> its execution node, lost mid-run
    chosen = select(ctx.plan, tracker.steps, tracker.order, dead=dead | set(lost), lost=lost)
    # A lost node's hosts were neither stopped nor checked (nothing reaches them but through the node): whatever
    # the steps declare, a human must look there.
    for node in sorted(set(lost.values()) - {m.get("node") for m in chosen.missing}):
        chosen.missing.append({"step": "*", "host": ",".join(sorted(h for h, n in lost.items() if n == node)),
                               "node": node, "error": f"execution node {node} was lost mid-run: what ran on its "
                               "hosts was neither stopped nor checked"})
    if not chosen.changed_anything:
        return Outcome.FAILED, {"steps": [], "outcome": None}
    order = [ps.name for ps, _ in reversed(chosen.completed)]
    ctx.bus.emit(Kind.ROLLBACK_START, steps=order)
    for item in chosen.declared:
        ctx.bus.emit(Kind.NOTICE, level="info", message=f"step {item['step']} changed {', '.join(item['hosts'])}: "
                     f"its undo is declared undo={item['undo']}")
    failures = list(chosen.missing)
    if chosen.completed:
        # Not cancellable by the stop that may have led here: only a second Ctrl-C ends an undo early.
        failures += run_undo(ctx, chosen.completed, "undo of what the run changed", cancellable=False,
                             stopped_hosts=[h for h in stopped(tracker.steps) if h not in lost],
                             lost_nodes=set(lost.values()))
    outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.ROLLED_BACK
    ctx.bus.emit(Kind.ROLLBACK_END, outcome=outcome.value, failures=failures, steps=order)
    return outcome, {"steps": order, "outcome": outcome.value, "failures": failures}


def stopped(states: dict[str, StepState]) -> list[str]:
    """Hosts where a task was in flight when the run was stopped."""
    return sorted({h for s in states.values() for h, a in s.hosts.items() if a.status is HostStatus.UNKNOWN})


def run_undo(ctx: Context, completed: Completed, why: str, *, exact_hosts: bool = True,
             cancellable: bool = True, stopped_hosts: list[str] | None = None,
             lost_nodes: set[str] | None = None) -> list[dict[str, Any]]:
    """Run the undo plays of ``completed`` as one execution (one per participant over execution nodes, never
    through a node in ``lost_nodes``); return every host that did not come back clean.

    ``exact_hosts``: the host lists are host names (not patterns), so a host
    the undo never reached is a failure too.
    """
    def make_tracker(bus: Any) -> StepTracker:
        return StepTracker(bus, {f"undo:{ps.name}": ps.name for ps, _ in completed}, "rollback", ctx.redactor,
                           {ps.name: "undo" for ps, _ in completed}, {ps.name: ",".join(h) for ps, h in completed},
                           quiet=frozenset(ps.name for ps, _ in completed if ps.undo is None and ps.kind.quiet))

    tracker: Any
    result: Any
    if ctx.nodes:
        from technician_ops.engine import fanout

        result, tracker = fanout.undo(ctx, completed, stopped_hosts or [], lost_nodes or set(), make_tracker,
                                      cancellable=cancellable)
    else:
        playbook = write_undo_playbook(ctx.plan, completed, ctx.pdd / "project" / "rollback.yml", why, stopped_hosts)
        tracker = make_tracker(ctx.bus)
        result = execute(ctx.pdd, playbook, ctx.inventories, tracker, ident="rollback", check=False, envvars=ctx.env,
                         cancel=ctx.cancelled if cancellable else None, lock_fd=ctx.lock_fd,
                         args=cmdline(ctx.plan.options, ctx.pdd, phase="rollback"))
    failures: list[dict[str, Any]] = []
    for ps, hosts in completed:
        run = tracker.steps.get(ps.name)
        if run is None or not run.hosts:
            failures.append({"step": ps.name, "host": ",".join(hosts),
                             "error": "undo did not run" if run is None else "undo matched no host"})
            continue
        for host, agg in run.hosts.items():
            if agg.status in (HostStatus.FAILED, HostStatus.UNREACHABLE, HostStatus.UNKNOWN) or agg.ignored_errors:
                failures.append({"step": ps.name, "host": host, "error": agg.error or agg.status.value})
        for host in hosts if exact_hosts else []:
            if host not in run.hosts:
                failures.append({"step": ps.name, "host": host, "error": "host not reached by the undo"})
    if result.rc not in (0, 2, 4) and not failures:
        failures.append({"step": "*", "host": "*", "error": f"rollback execution exited {result.rc}"})
    for failure in failures:  # which node a host's undo ran through, for the human who follows up
        node = ctx.assigned.get(str(failure.get("host")))
        if node is not None:
            failure.setdefault("node", node)
    return failures
