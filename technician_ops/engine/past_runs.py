"""Undo an earlier run: ``rollback RUN_ID`` and ``recover RUN_ID``.

A run's undo data outlives it: backups sit in ``<state_dir>/backups/RUN_ID``,
a vault step's rotation in ``<state_dir>/runs/RUN_ID/vault-STEP.json``, and
the audit record says which steps completed on which hosts, with which
parameters, from which runbook text (sha256).  Both commands rebuild the
original run's plan from that record -- *with the original run id*, so every
undo finds the backups and state files that run wrote -- and execute the undo
plays of its completed steps, newest first (``Plan.rollback_playbook``), as a
new run: its own run id, audit record (``rollback_of`` names the original),
lock (the runbook's) and event stream.

``rollback`` is for a run that *succeeded* and whose effect is unwanted after
the fact.  ``recover`` is for a run that was *killed* (record ``interrupted``)
between changing something and recording it: it finishes the saga the dead
process could not.  For a vault step caught mid-rotation, recovery first
converges the recorded intent with what Vault holds (the vault
kind's ``check_undo_of_past_run``), then the step's normal undo restores the previous
version and re-applies it.  Rolling back, not completing, is the deliberate
choice: completing would mean re-running the apply and verify tasks with a
value this process never saw (it died with the killed run), while the old
value is still in Vault's history and the undo's apply/verify prove the hosts
use it again.  The operator re-runs the runbook afterwards.

Everything is checked before anything changes: the run's outcome, later runs
of the same runbook that the undo would clobber, every backup against the
sha256 in the (tamper-evident) audit record, every vault state file.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from technician_ops.engine import saga
from technician_ops.engine.request import Cancelled, RunResult, UndoRequest
from technician_ops.engine.run import resolve_secrets
from technician_ops.engine.session import Context, Session, Verdict, Work, header
from technician_ops.errors import ApprovalMissing, ParameterError, PastRunError
from technician_ops.events import Bus, Kind
from technician_ops.outcomes import Outcome
from technician_ops.plan.compiler import Plan, PlanStep, bind_plan
from technician_ops.project import Project
from technician_ops.plan.loader import load_runbook
from technician_ops.state import DONE, StepState, StepStatus
from technician_ops.steps.base import PastRun

ROLLBACK = "rollback"
RECOVER = "recover"
_NO_NET_CHANGE = {"failed", "refused", "skipped", "rolled_back"}


def undo_past_run(request: UndoRequest, project: Project, bus: Bus, audit: Any,
                  cancelled: Cancelled | None = None) -> RunResult:
    """Undo an earlier run as a run of its own (``request.action``: rollback or recover).

    ``rollback``: an earlier *succeeded* run, from its recorded backups and
    secret versions.  Refused (nothing changes) when the run did not succeed,
    was a dry run, was already rolled back, a later run of the same runbook
    changed things since (undo that one first), or a backup or vault state
    file it needs is missing or does not match the audit record.

    ``recover``: a run that was killed mid-way (record ``interrupted``): vault
    rotations caught between intent and publish are resolved first; then the
    undo of every step that completed (and of an in-flight step whose kind
    undoes its own failure, like vault) runs newest first.

    Asks ``request.prompt`` unless ``request.yes``; without either it raises
    :class:`ApprovalMissing` (exit 5).
    """
    started = time.monotonic()
    record = audit.get(request.run_id)
    past, plan, completed, notices = _prepare(request.action, project, record, audit)
    new_id = request.new_run_id
    if new_id is None:
        from technician_ops.audit import new_run_id

        new_id = new_run_id()
    head = header(plan.runbook, new_id, environ=None, interactive=request.prompt is not None, check=False,
                  params=record.get("params") or {}, action=request.action, rollback_of=record["run_id"])
    session = Session(project, bus, audit, cancelled)
    if not request.yes:
        with session.refusing(head):
            if request.prompt is None:
                raise ApprovalMissing(f"{request.action} of run {record['run_id']} needs confirmation and there is "
                                      "no terminal to ask", hint=f"pass --yes to {request.action} without asking")
            if not request.prompt(request.action, _describe(past, completed, notices)):
                raise ApprovalMissing(f"{request.action} of run {record['run_id']} was not confirmed: nothing changed")
    targets = sorted({h for ps, hosts in completed if not ps.kind.controller for h in hosts})
    work = Work(plan, head, body=partial(_undo, past, completed), targets=lambda _inventory: targets, started=started,
                skip_preflight=request.skip_preflight or not targets, notices=notices)
    return session.run(work)


def _undo(past: PastRun, completed: saga.Completed, ctx: Context) -> Verdict:
    """The body of an undo run: the kinds' recovery decisions, then one execution of the undo plays."""
    for decision in past.decisions:  # the recovery's decisions become the state the undo reads
        decision.apply(ctx.run_id)
        ctx.bus.emit(Kind.ARTIFACT, **decision.artifact())
    if not completed:
        return Verdict(Outcome.SUCCEEDED, rollback={"steps": [], "outcome": None, "failures": []})
    order = [ps.name for ps, _ in reversed(completed)]
    ctx.bus.emit(Kind.ROLLBACK_START, steps=order)
    # The recorded hosts of an interrupted run may be patterns, not names.
    failures = saga.run_undo(ctx, completed, f"{past.action} of run {past.run_id}", exact_hosts=False)
    if ctx.cancelled and ctx.cancelled():
        outcome = Outcome.INTERRUPTED
    else:
        outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.SUCCEEDED
    rb_outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.ROLLED_BACK
    ctx.bus.emit(Kind.ROLLBACK_END, outcome=rb_outcome.value, failures=failures, steps=order)
    return Verdict(outcome, rollback={"steps": order, "outcome": rb_outcome.value, "failures": failures})


def _prepare(action: str, project: Project, record: dict[str, Any], audit: Any) -> tuple[PastRun, Plan, saga.Completed, list[str]]:
    """Every check that can refuse, and the plan; reads only."""
    run_id = record["run_id"]
    outcome = record.get("outcome")
    if record.get("check"):
        raise PastRunError(f"run {run_id} was a --check dry run: it changed nothing, there is nothing to undo")
    if action == ROLLBACK and outcome != Outcome.SUCCEEDED.value:
        hint = ("a killed run is converged with 'technician-ops recover RUN_ID'" if outcome == "interrupted"
                else "only a succeeded run is rolled back; a failed run already undid itself")
        raise PastRunError(f"run {run_id} ended {outcome}, not succeeded: refusing to roll it back", hint=hint)
    if action == RECOVER:
        if outcome != Outcome.INTERRUPTED.value:
            raise PastRunError(f"run {run_id} ended {outcome}, not interrupted: there is nothing to recover",
                               hint="'technician-ops rollback RUN_ID' undoes a succeeded run")
        if record.get("rollback"):
            raise PastRunError(f"run {run_id} was killed during its own rollback: which undos ran is not known",
                               hint=f"inspect 'technician-ops show {run_id}' and finish the undo by hand")
    if record.get("rollback_of"):
        raise PastRunError(f"run {run_id} is itself a {record.get('action', 'rollback')} of run {record['rollback_of']}",
                           hint="re-run the runbook instead")
    _refuse_if_superseded(record, audit)
    plan, notices = _rebuild_plan(project, record)
    completed = _completed_steps(plan, record, include_in_flight=action == RECOVER)
    past = PastRun(action, record, project.state_dir)
    by_kind: dict[Any, saga.Completed] = {}
    for item in completed:
        by_kind.setdefault(item[0].kind, []).append(item)
    kept = {ps.name: (ps, hosts) for kind, items in by_kind.items() for ps, hosts in kind.check_undo_of_past_run(past, items)}
    completed = [kept[ps.name] for ps, _ in completed if ps.name in kept]  # run order, the hosts the kinds kept
    if not completed and not any(d.changes_state for d in past.decisions):
        raise PastRunError(f"run {run_id} completed no step that changed something: nothing to undo")
    return past, plan, completed, notices


def _refuse_if_superseded(record: dict[str, Any], audit: Any) -> None:
    """Undoing run A after run B of the same runbook changed things would clobber B's change too."""
    run_id = record["run_id"]
    undone: set[str] = set()
    for row in audit.history(record["runbook"], limit=500):
        if row["run_id"] == run_id:
            return
        if row.get("check") or row.get("outcome") in _NO_NET_CHANGE:
            continue
        later = audit.get(row["run_id"])
        of = later.get("rollback_of")
        if of == run_id:
            if later["outcome"] == Outcome.SUCCEEDED.value:
                raise PastRunError(f"run {run_id} was already undone by run {later['run_id']}")
            raise PastRunError(f"an earlier {later.get('action', 'rollback')} of run {run_id} ({later['run_id']}) "
                               f"ended {later['outcome']}: the state it left needs a human",
                               hint=f"see 'technician-ops show {later['run_id']}'")
        if of and later["outcome"] == Outcome.SUCCEEDED.value:
            undone.add(of)
            continue
        if row["run_id"] in undone:
            continue
        raise PastRunError(
            f"run {row['run_id']} of runbook {record['runbook']} ran after run {run_id} and ended {row['outcome']}: "
            f"undoing {run_id} now would also undo its changes",
            hint=f"roll back {row['run_id']} first (newest first), or fix by hand")


def _rebuild_plan(project: Project, record: dict[str, Any]) -> tuple[Plan, list[str]]:
    """The original run's plan: same runbook file, recorded parameters, the original run id."""
    path = Path(str(record.get("path") or ""))
    if not path.is_file():
        raise PastRunError(f"the runbook run {record['run_id']} used is gone: {path}",
                           hint="restore it (the record has its sha256 and git commit) and try again")
    runbook = load_runbook(path, project.root)
    notices = []
    if record.get("runbook_sha256") and runbook.sha256 != record["runbook_sha256"]:
        notices.append(f"runbook {path} changed since run {record['run_id']} (sha256 {record['runbook_sha256'][:12]} "
                       f"then, {runbook.sha256[:12]} now): the undo blocks are taken from the current text")
    secret = runbook.secret_names()
    given = {k: v for k, v in (record.get("params") or {}).items() if k not in secret and v is not None}
    try:  # secrets: TECHNICIAN_OPS_PARAM_<NAME>, never recorded
        plan = bind_plan(runbook, project, given, run_id=record["run_id"])
    except ParameterError as exc:
        raise ParameterError(f"cannot rebuild run {record['run_id']}'s parameters: {exc.message}", hint=exc.hint) from None
    return resolve_secrets(plan, None), notices


def _completed_steps(plan: Plan, record: dict[str, Any], *, include_in_flight: bool) -> list[tuple[PlanStep, list[str]]]:
    """(step, hosts) whose undo must run, in run order -- the same rule as a failing run's rollback."""
    by_name = {ps.name: ps for ps in plan.steps}
    recorded = sorted((StepState.from_record(s) for s in (record.get("steps") or {}).values()), key=lambda s: s.order)
    completed: list[tuple[PlanStep, list[str]]] = []
    missing = []
    for entry in recorded:
        name = entry.name
        ps = by_name.get(name)
        hosts_rec = entry.hosts
        done = [h for h, r in hosts_rec.items() if r.status in DONE]
        in_flight = entry.status is not StepStatus.SUCCEEDED
        if ps is None:
            if entry.changed:
                missing.append(f"{name} (no longer in the runbook)")
            continue
        if not ps.kind.mutating:
            continue
        if in_flight:
            if not include_in_flight:
                continue
            if ps.kind.undo_on_own_failure:
                done = sorted(set(done) | set(hosts_rec)) or [ps.hosts]
        if not done:
            continue
        changed = any(hosts_rec[h].changed for h in done if h in hosts_rec)
        if not changed and not ps.kind.auto_undo and not in_flight:
            continue
        if not ps.has_undo:
            missing.append(f"{name} (changed {', '.join(done)} and has no undo)")
            continue
        completed.append((ps, done))
    if missing:
        raise PastRunError(f"run {record['run_id']} cannot be undone: step(s) {'; '.join(missing)}",
                           hint="undo those by hand; nothing was changed")
    return completed


def _describe(past: PastRun, completed: saga.Completed, notices: list[str]) -> str:
    rec = past.record
    lines = [f"{past.action} run {rec['run_id']} of {rec['runbook']} (started {rec.get('started_at')}, "
             f"{rec.get('outcome')}); undo, newest first:"]
    for ps, hosts in reversed(completed):
        lines.append(f"  - {ps.name} ({ps.kind.name}) on {', '.join(hosts)}")
    lines.extend(text for text in (d.describe() for d in past.decisions) if text)
    lines.extend(f"warning: {n}" for n in notices)
    return "\n".join(lines)
