"""The saga: which steps to undo, on which hosts, and the undo execution.

A failing run undoes its completed steps newest first (``roll_back``);
``rollback RUN_ID`` and ``recover RUN_ID`` run the same undo plays for an
earlier run (``run_undo``).  Both read step state as ``state.StepState``.
"""

from __future__ import annotations

from typing import Any

from technician_ops.engine.executor import StepTracker, execute
from technician_ops.engine.session import Context
from technician_ops.events import Kind
from technician_ops.outcomes import Outcome
from technician_ops.plan.compiler import PlanStep
from technician_ops.plan.files import write_undo_playbook
from technician_ops.state import HostStatus, StepState, StepStatus

Completed = list[tuple[PlanStep, list[str]]]  # (step, the hosts its undo runs on), in run order


def select(ctx: Context, steps: dict[str, StepState], order: list[str], failed: str | None) -> tuple[Completed, list[dict[str, Any]]]:
    """What a failing run undoes: (steps with the hosts to undo them on, hosts that cannot be undone)."""
    completed: Completed = []
    missing: list[dict[str, Any]] = []
    by_name = {ps.name: ps for ps in ctx.plan.steps}
    # Hosts this run just found unreachable are not retried by the undo (an
    # SSH attempt to a host that vanished can hang): they are reported as
    # not rolled back, by name.
    dead = {h for run in steps.values() for h, a in run.hosts.items() if a.status is HostStatus.UNREACHABLE}
    for name in order:
        run = steps[name]
        ps = by_name[name]
        own_failure = name == failed and ps.kind.undo_on_own_failure
        if run.status is not StepStatus.SUCCEEDED and not own_failure:
            continue
        hosts = run.done_hosts if not own_failure else list(run.hosts)
        if not ps.kind.mutating or not hosts:
            continue
        if not run.changed and not ps.kind.has_auto_undo(ps.step):
            continue  # reported no change anywhere: nothing to undo
        for host in sorted(set(hosts) & dead):
            missing.append({"step": name, "host": host, "error": "host unreachable during the run: not rolled back"})
        hosts = [h for h in hosts if h not in dead]
        if not hosts:
            continue
        if ps.has_undo:
            completed.append((ps, hosts))
        else:
            missing.append({"step": name, "host": ",".join(hosts), "error": "step changed things and has no undo"})
    return completed, missing


def roll_back(ctx: Context, tracker: StepTracker, failed: str | None) -> tuple[Outcome, dict[str, Any]]:
    """Undo what a failing run completed, newest first, as a second execution."""
    if ctx.plan.check:
        return Outcome.FAILED, {}
    completed, missing = select(ctx, tracker.steps, tracker.order, failed)
    if not completed and not missing:
        return Outcome.FAILED, {"steps": [], "outcome": None}
    order = [ps.name for ps, _ in reversed(completed)]
    ctx.bus.emit(Kind.ROLLBACK_START, steps=order)
    failures = list(missing)
    if completed:
        failures += run_undo(ctx, completed, "undo of the completed steps")
    outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.ROLLED_BACK
    ctx.bus.emit(Kind.ROLLBACK_END, outcome=outcome.value, failures=failures, steps=order)
    return outcome, {"steps": order, "outcome": outcome.value, "failures": failures}


def run_undo(ctx: Context, completed: Completed, why: str, *, exact_hosts: bool = True) -> list[dict[str, Any]]:
    """Run the undo plays of ``completed`` as one execution; return every host that did not come back clean.

    ``exact_hosts``: the host lists are host names (not patterns), so a host
    the undo never reached is a failure too.
    """
    playbook = write_undo_playbook(ctx.plan, completed, ctx.pdd / "project" / "rollback.yml", why)
    tracker = StepTracker(ctx.bus, {f"undo:{ps.name}": ps.name for ps, _ in completed}, "rollback", ctx.redactor,
                          {ps.name: "undo" for ps, _ in completed}, {ps.name: ",".join(h) for ps, h in completed})
    result = execute(ctx.pdd, playbook, ctx.inventories, tracker, ident="rollback", check=False, envvars=ctx.env,
                     cancel=ctx.cancelled)
    failures: list[dict[str, Any]] = []
    for ps, hosts in completed:
        run = tracker.steps.get(ps.name)
        if run is None:
            failures.append({"step": ps.name, "host": ",".join(hosts), "error": "undo did not run"})
            continue
        for host, agg in run.hosts.items():
            if agg.status in (HostStatus.FAILED, HostStatus.UNREACHABLE) or agg.ignored_errors:
                failures.append({"step": ps.name, "host": host, "error": agg.error or agg.status.value})
        for host in hosts if exact_hosts else []:
            if host not in run.hosts:
                failures.append({"step": ps.name, "host": host, "error": "host not reached by the undo"})
    if result.rc not in (0, 2, 4) and not failures:
        failures.append({"step": "*", "host": "*", "error": f"rollback execution exited {result.rc}"})
    return failures
