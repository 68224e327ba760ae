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

import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Any

from technician_ops.engine import saga
from technician_ops.engine.executor import STOP_GRACE
from technician_ops.engine.request import Cancelled, RunResult, UndoRequest
from technician_ops.engine.run import resolve_secrets
from technician_ops.engine.session import Context, Session, Verdict, Work, header
from technician_ops.errors import ApprovalMissing, ParameterError, PastRunError
from technician_ops.events import Bus, Kind
from technician_ops.outcomes import Outcome
from technician_ops.plan.compiler import Plan, PlanStep, bind_plan
from technician_ops.plan.options import AnsibleOptions
from technician_ops.project import Project
from technician_ops.plan.loader import load_runbook
from technician_ops.state import StepState, StepStatus
from technician_ops.steps.base import PastRun

ROLLBACK = "rollback"
RECOVER = "recover"
_NO_NET_CHANGE = {"failed", "refused", "skipped", "rolled_back", "awaiting_approval"}


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
    project = _recorded_inventory(project, record)
    past, plan, completed, stopped_hosts, notices = _prepare(request.action, project, record, audit)
    new_id = request.new_run_id
    if new_id is None:
        from technician_ops.audit import new_run_id

        new_id = new_run_id()
    head = header(plan.runbook, new_id, project=project, environ=None, interactive=request.prompt is not None, check=False,
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
    # A killed run's supervisor holds the lock until its last process is gone (engine/supervise.py):
    # an undo started right after the kill waits for that rather than failing.
    work = Work(plan, head, body=partial(_undo, past, completed, stopped_hosts), targets=lambda _inventory: targets,
                started=started, lock_wait=STOP_GRACE + 10,
                skip_preflight=request.skip_preflight or not targets, notices=notices)
    return session.run(work)


def _undo(past: PastRun, completed: saga.Completed, stopped_hosts: list[str], ctx: Context) -> Verdict:
    """The body of an undo run: the kinds' recovery decisions, then one execution of the undo plays."""
    for decision in past.decisions:  # the recovery's decisions become the state the undo reads
        decision.apply(ctx.run_id)
        ctx.bus.emit(Kind.ARTIFACT, **decision.artifact())
    if not completed:
        return Verdict(Outcome.SUCCEEDED, rollback={"steps": [], "outcome": None, "failures": []})
    order = [ps.name for ps, _ in reversed(completed)]
    ctx.bus.emit(Kind.ROLLBACK_START, steps=order)
    failures = saga.run_undo(ctx, completed, f"{past.action} of run {past.run_id}", stopped_hosts=stopped_hosts)
    if ctx.cancelled and ctx.cancelled():
        outcome = Outcome.INTERRUPTED
    else:
        outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.SUCCEEDED
    rb_outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.ROLLED_BACK
    ctx.bus.emit(Kind.ROLLBACK_END, outcome=rb_outcome.value, failures=failures, steps=order)
    return Verdict(outcome, rollback={"steps": order, "outcome": rb_outcome.value, "failures": failures})


def _prepare(action: str, project: Project, record: dict[str, Any],
             audit: Any) -> tuple[PastRun, Plan, saga.Completed, list[str], list[str]]:
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
    completed, stopped_hosts = _completed_steps(plan, record, replay=action == RECOVER)
    past = PastRun(action, record, project.state_dir)
    by_kind: dict[Any, saga.Completed] = {}
    for item in completed:
        by_kind.setdefault(item[0].kind, []).append(item)
    kept = {ps.name: (ps, hosts) for kind, items in by_kind.items() for ps, hosts in kind.check_undo_of_past_run(past, items)}
    completed = [kept[ps.name] for ps, _ in completed if ps.name in kept]  # run order, the hosts the kinds kept
    if not completed and not any(d.changes_state for d in past.decisions):
        raise PastRunError(f"run {run_id} completed no step that changed something: nothing to undo")
    return past, plan, completed, stopped_hosts, notices


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
    runbook = load_runbook(path, project.root, hosts=record.get("hosts_given"))
    notices = []
    if record.get("runbook_sha256") and runbook.sha256 != record["runbook_sha256"]:
        notices.append(f"runbook {path} changed since run {record['run_id']} (sha256 {record['runbook_sha256'][:12]} "
                       f"then, {runbook.sha256[:12]} now): the undo blocks are taken from the current text")
    secret = runbook.secret_names()
    given = {k: v for k, v in (record.get("params") or {}).items() if k not in secret and v is not None}
    try:  # secrets: TECHNICIAN_OPS_PARAM_<NAME>, never recorded
        # The undo sees the -e variables and --diff the run had; --limit and --tags selected what ran,
        # which the record already says.
        recorded = AnsibleOptions.from_record(record.get("ansible"))
        plan = bind_plan(runbook, project, given, run_id=record["run_id"],
                         options=AnsibleOptions(diff=recorded.diff, extra_vars=recorded.extra_vars))
    except ParameterError as exc:
        raise ParameterError(f"cannot rebuild run {record['run_id']}'s parameters: {exc.message}", hint=exc.hint) from None
    return resolve_secrets(plan, None), notices


def _completed_steps(plan: Plan, record: dict[str, Any], *, replay: bool) -> tuple[saga.Completed, list[str]]:
    """(step, hosts) whose undo must run, in run order: the same rule as a failing run's rollback (saga.select).

    ``replay``: a killed run's record stops where the process died, but its Ansible execution went on
    until its supervisor stopped it; ansible-runner's job events (in the run's artifacts) show every
    step that started, and hosts with a task in flight then are ``unknown``.
    """
    states = {str(s.get("name")): StepState.from_record(s) for s in (record.get("steps") or {}).values()}
    if replay:
        for name, state in _replayed(plan, record).items():
            if name not in states or states[name].status is not StepStatus.SUCCEEDED:
                states[name] = state
    index = {ps.name: i for i, ps in enumerate(plan.steps)}
    order = sorted(states, key=lambda n: (index.get(n, len(index)), states[n].order))
    chosen = saga.select(plan, states, order)
    if chosen.missing:
        what = "; ".join(f"{m['step']} on {m['host']}: {m['error']}" for m in chosen.missing)
        raise PastRunError(f"run {record['run_id']} cannot be undone: {what}", hint="undo those by hand; nothing was changed")
    return chosen.completed, saga.stopped(states)


def _replayed(plan: Plan, record: dict[str, Any]) -> dict[str, StepState]:
    """The step states ansible-runner's job events of the run's forward execution show: the controller's
    (``artifacts/run``) and, for a run over execution nodes, each node's stream (``artifacts/run@NODE``)."""
    artifacts = Path(str(record.get("artifact_dir") or "")) / "artifacts"
    states: dict[str, StepState] = {}
    for directory in [artifacts / "run", *sorted(artifacts.glob("run@*"))]:
        for name, state in _replayed_one(plan, directory / "job_events").items():
            if name in states:
                states[name].hosts.update(state.hosts)
                if state.status is StepStatus.FAILED:
                    states[name].status = StepStatus.FAILED
            else:
                states[name] = state
    return states


def _replayed_one(plan: Plan, events_dir: Path) -> dict[str, StepState]:
    import json

    from technician_ops.engine.executor import StepTracker
    from technician_ops.engine.redact import Redactor

    if not events_dir.is_dir():
        return {}
    tracker = StepTracker(Bus([]), {ps.name: ps.name for ps in plan.steps}, "run", Redactor([]),
                          {ps.name: ps.kind.name for ps in plan.steps}, {ps.name: ps.hosts for ps in plan.steps})

    # ``N-UUID.json``: events technician-ops received; ``UUID-partial.json``: events Ansible's callback
    # wrote that nobody received any more (technician-ops was gone).  Both carry the event's counter.
    events: dict[int, dict[str, Any]] = {}
    for path in events_dir.glob("*.json"):
        try:
            event = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a file the killed execution was still writing
        if isinstance(event, dict) and isinstance(event.get("counter"), int):
            events.setdefault(event["counter"], event)
    for counter in sorted(events):
        tracker.handle(events[counter])
    tracker.finish(0 if tracker.finished_cleanly else 1, stopped=not tracker.finished_cleanly)
    return tracker.steps


def _recorded_inventory(project: Project, record: dict[str, Any]) -> Project:
    """``project`` with the inventory the run used (its record names it); refused if that changed since."""
    recorded = record.get("inventory")
    if not recorded:
        return project  # a record from before inventories were recorded: the project's own
    from technician_ops.engine.inventory import sources

    paths = tuple(Path(str(item["path"])) for item in recorded)
    now: dict[str, dict[str, Any]] = {str(item["path"]): item for item in sources(paths)}
    changed = []
    for item in recorded:
        current = now[str(item["path"])]
        if current["sha256"] != item.get("sha256"):
            state = "gone" if current["kind"] == "missing" else \
                f"sha256 {str(item.get('sha256'))[:12]} then, {str(current['sha256'])[:12]} now"
            changed.append(f"{item['path']} ({state})")
    if changed:
        raise PastRunError(f"the inventory run {record['run_id']} used has changed since: {', '.join(changed)}",
                           hint="its undo must run on the hosts it touched: restore that inventory, or undo by hand")
    return dataclasses.replace(project, inventory=paths)


def _describe(past: PastRun, completed: saga.Completed, notices: list[str]) -> str:
    rec = past.record
    lines = [f"{past.action} run {rec['run_id']} of {rec['runbook']} (started {rec.get('started_at')}, "
             f"{rec.get('outcome')}); undo, newest first:"]
    for ps, hosts in reversed(completed):
        lines.append(f"  - {ps.name} ({ps.kind.name}) on {', '.join(hosts)}")
    lines.extend(text for text in (d.describe() for d in past.decisions) if text)
    lines.extend(f"warning: {n}" for n in notices)
    return "\n".join(lines)
