"""A forward run: parse -> validate -> plan -> preflight -> execute -> (rollback) -> record.

Everything that can refuse without running (parameters, approvals, secrets,
the kinds' ``before_run`` checks) happens here, before the session takes the
lock; the session does the rest, with ``_execute`` as its body.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

from technician_ops import steps as kinds
from technician_ops.engine import saga
from technician_ops.engine.handlers import Approvals
from technician_ops.engine.request import Cancelled, RunRequest, RunResult
from technician_ops.engine.session import Context, Session, Verdict, Work, check_targets, header, target_hosts
from technician_ops.errors import ExitCode
from technician_ops.events import Bus, Kind
from technician_ops.outcomes import Outcome
from technician_ops.plan.compiler import Plan, bind_plan
from technician_ops.plan.options import GATE_TAG, AnsibleOptions, cmdline, parse_extra_vars, split_tags
from technician_ops.project import Project
from technician_ops.plan.loader import load
from technician_ops.state import StepStatus


def run(request: RunRequest, project: Project, bus: Bus, audit: Any, cancelled: Cancelled | None = None) -> RunResult:
    started = time.monotonic()
    runbook = load(request.runbook, project, strict=request.strict, hosts=request.hosts)
    request = with_run_id(request)
    assert request.run_id is not None
    head = header(runbook, request.run_id, project=project, environ=request.environ, interactive=request.prompt is not None,
                  check=request.check)
    if request.hosts is not None:
        head["hosts_given"] = request.hosts  # what ``rollback RUN_ID`` must load the file with again
    if request.releases is not None:
        head["releases"] = request.releases  # the held run (awaiting_approval) this run was released from
    session = Session(project, bus, audit, cancelled)
    with session.refusing(head):  # bad parameters, approval missing, Vault refuses: nothing ran
        options, params = ansible_options(request, runbook, project)
        plan = bind_plan(runbook, project, params, check=request.check, environ=request.environ,
                         run_id=request.run_id, options=options)
        head["params"] = redacted_params(plan)
        approvals = Approvals(plan, request.approve, request.yes, request.prompt, bus, request.approver)
        approvals.precheck()
        plan = resolve_secrets(plan, request.environ)
        head["params"] = redacted_params(plan)  # again: a value may hold a secret resolved just now
        if options:
            head["ansible"] = recorded_options(plan)
        for kind, steps in kinds_of(plan).items():
            kind.before_run(steps, check=plan.check)
    work = Work(plan, head, body=_execute, targets=partial(target_hosts, plan), started=started,
                lock_wait=request.wait_lock, skip_preflight=request.skip_preflight, accelerate=request.accelerate,
                environ=request.environ, handlers={"ask": approvals},
                notices=[str(w) for w in runbook.warnings], check_inventory=partial(check_targets, plan),
                after_run=True)
    return session.run(work)


def with_run_id(request: RunRequest) -> RunRequest:
    """``request`` with its run id: the one given (``serve`` picks it before it starts the run, to find the
    record again after a restart), else a new one."""
    if request.run_id is None:
        from technician_ops.audit import new_run_id

        return dataclasses.replace(request, run_id=new_run_id())
    return request


def hold(request: RunRequest, project: Project, bus: Bus, audit: Any, reason: str) -> RunResult:
    """Record ``request`` as ``awaiting_approval`` instead of running it: nothing runs, and the record
    keeps the request (runbook, parameters, limit) for ``release`` to run once a human approves.

    Its parameters and hosts are bound and checked now, as a run would, so a request that could never run
    is ``refused`` at once.  They are saved as given: a secret parameter cannot be held.
    """
    started = time.monotonic()
    runbook = load(request.runbook, project)
    request = with_run_id(request)
    assert request.run_id is not None
    head = header(runbook, request.run_id, project=project, environ=request.environ, interactive=False, check=False)
    with Session(project, bus, audit).refusing(head):
        from technician_ops.engine.session import load_inventory
        from technician_ops.errors import ParameterError

        held = sorted(set(request.params) & runbook.secret_names())
        if held:
            raise ParameterError(f"parameter {held[0]!r} is a secret: a held run's parameters are saved in its "
                                 "record, so a run with a secret parameter cannot wait for approval")
        options, params = ansible_options(request, runbook, project)
        plan = bind_plan(runbook, project, params, environ=request.environ, run_id=request.run_id, options=options)
        head["params"] = redacted_params(plan)
        check_targets(plan, load_inventory(project))
    head["request"] = {"runbook": runbook.name, "params": dict(request.params), "limit": request.limit}
    audit.record_skipped(head, reason, outcome=Outcome.AWAITING_APPROVAL.value)
    return RunResult(request.run_id, Outcome.AWAITING_APPROVAL, ExitCode.APPROVAL_MISSING, None, {}, {}, None,
                     time.monotonic() - started)


def refuse(request: RunRequest, project: Project, audit: Any, reason: str) -> str:
    """Record that ``request`` was refused before anything ran (``serve``: ambiguous alert, rate limit, a
    label the trigger reads is missing); its run id.  The parameters recorded are the declared, non-secret
    ones it was given, as given."""
    runbook = load(request.runbook, project)
    request = with_run_id(request)
    assert request.run_id is not None
    head = header(runbook, request.run_id, project=project, environ=request.environ, interactive=False, check=False)
    secret = runbook.secret_names()
    head["params"] = {k: v for k, v in request.params.items() if k in runbook.params and k not in secret}
    if request.limit is not None:
        head["ansible"] = {"limit": request.limit}
    audit.record_skipped(head, reason, outcome=Outcome.REFUSED.value)
    return request.run_id


def release(project: Project, run_id: str, user: str, bus: Bus, audit: Any,
            cancelled: Cancelled | None = None) -> RunResult:
    """Run a held (``awaiting_approval``) run's saved request as a new run, its approve steps approved by
    ``user``; its header names the held run (``releases``).  A held run is released once: a second
    release is refused, unless the first one was refused or skipped before anything ran.
    """
    import json
    import os

    from technician_ops.audit import new_run_id
    from technician_ops.engine.origin import ALERTMANAGER, ORIGIN_DETAIL_ENV, ORIGIN_ENV
    from technician_ops.errors import PastRunError, TechnicianOpsError, UsageError

    if not isinstance(user, str) or not user.strip() or len(user) > 128 or not user.isprintable():
        raise UsageError("the approving user must be a printable name of at most 128 characters")
    held = audit.get(run_id)
    held_id = str(held["run_id"])
    if held.get("outcome") != Outcome.AWAITING_APPROVAL.value:
        raise PastRunError(f"run {held_id} is not awaiting approval (it is {held.get('outcome')})",
                           hint="'technician-ops history --outcome awaiting_approval' lists the held runs")
    saved = held.get("request")
    if not isinstance(saved, dict) or not isinstance(saved.get("runbook"), str) \
            or not isinstance(saved.get("params"), dict):
        raise PastRunError(f"run {held_id} has no saved request to release")
    runbook = load(saved["runbook"], project)
    if runbook.sha256 != held.get("runbook_sha256"):
        raise PastRunError(f"runbook {runbook.name} changed since run {held_id} was held: what was asked for is "
                           "not what would run", hint=f"run it by hand: technician-ops run {runbook.name} ...")
    new_id = new_run_id()
    taken = audit.claim_release(held_id, new_id, user)
    if taken is not None:
        raise PastRunError(f"run {held_id} was already approved by {taken['released_by']} at {taken['released_at']}: "
                           f"run {taken['run_id']}", hint=f"see 'technician-ops show {taken['run_id']}'")
    environ = dict(os.environ)
    for name in (ORIGIN_ENV, ORIGIN_DETAIL_ENV):
        environ.pop(name, None)
    origin = held.get("origin") or {}
    if origin.get("type") == ALERTMANAGER and isinstance(origin.get("alert"), dict):
        environ[ORIGIN_ENV] = ALERTMANAGER  # the alert is why it runs; the approval says who let it
        environ[ORIGIN_DETAIL_ENV] = json.dumps(origin["alert"])
    limit = saved.get("limit")
    request = RunRequest(runbook.name, {str(k): str(v) for k, v in saved["params"].items()},
                         limit=limit if isinstance(limit, str) else None, run_id=new_id, environ=environ,
                         approver=user, releases=held_id)
    try:
        return run(request, project, bus, audit, cancelled)
    except TechnicianOpsError:
        # Refused or skipped before anything ran: it may be approved again.  An error after the run
        # started (the store failing as it sealed the record) keeps the claim: that release happened.
        try:
            outcome = audit.get(new_id).get("outcome")
        except TechnicianOpsError:
            outcome = None
        if outcome in (None, "refused", "skipped"):
            audit.drop_release(held_id, new_id)
        raise


def ansible_options(request: RunRequest, runbook: Any, project: Project) -> tuple[AnsibleOptions, dict[str, str]]:
    """ansible-playbook's options of ``request``, and the parameters with ``-e`` assignments to them."""
    from technician_ops.errors import ParameterError

    extra, assigned = parse_extra_vars(request.extra_vars, runbook.params) if request.extra_vars else ({}, {})
    twice = sorted(set(assigned) & set(request.params))
    if twice:
        raise ParameterError(f"parameter {twice[0]!r} is given by both -p and -e")
    skip = split_tags(request.skip_tags)
    if GATE_TAG in skip:  # approve and check steps, and the barriers between steps over execution nodes
        raise ParameterError(f"--skip-tags {GATE_TAG}: the '{GATE_TAG}' tag marks technician-ops' gates (approvals, "
                             "checks, the step barriers over execution nodes): they cannot be skipped")
    options = AnsibleOptions(request.limit, split_tags(request.tags), skip, request.diff, extra)
    return options, {**request.params, **assigned}


def recorded_options(plan: Plan) -> dict[str, Any]:
    """The options as the record keeps them; an extra variable may not carry a secret's value."""
    from technician_ops.engine.redact import Redactor
    from technician_ops.errors import ParameterError

    declared = plan.runbook.secret_names()
    secrets = [str(v) for k, v in plan.params.items() if k in declared and v is not None and str(v)]
    record = plan.options.record()
    if Redactor(secrets).obj(record["extra_vars"]) != record["extra_vars"]:
        raise ParameterError("an -e extra variable holds a secret parameter's value: secrets are never written "
                             "to a file; refer to the secret parameter in the runbook instead")
    return record


def _execute(ctx: Context) -> Verdict:
    """The body of a forward run: one execution, and the saga when a step failed or the run was stopped."""
    from technician_ops.engine.executor import StepTracker, execute

    plan = ctx.plan

    def make_tracker(bus: Any) -> StepTracker:
        return StepTracker(bus, {ps.name: ps.name for ps in plan.steps}, "run", ctx.redactor,
                           {ps.name: ps.kind.name for ps in plan.steps}, {ps.name: ps.hosts for ps in plan.steps},
                           quiet=frozenset(ps.name for ps in plan.steps if ps.kind.quiet),
                           conditions={ps.name: ps.step.attrs["when"] for ps in plan.steps if "when" in ps.step.attrs})

    outcome, failed_step, exit_code = Outcome.SUCCEEDED, None, None
    rollback: dict[str, Any] = {}
    tracker: Any
    result: Any
    if ctx.nodes:  # over execution nodes: a participant per place, one stream (engine/fanout.py)
        from technician_ops.engine import fanout

        result, tracker = fanout.forward(ctx, make_tracker)
        for node, why in sorted(result.lost.items()):
            ctx.bus.emit(Kind.NOTICE, level="error", node=node,
                         message=ctx.redactor.text(f"execution node {node} was lost mid-run ({why}): the results of "
                                                   "its hosts in that step are unknown, and nothing of it is undone"))
    else:
        tracker = make_tracker(ctx.bus)
        result = execute(ctx.pdd, ctx.files["playbook"], ctx.inventories, tracker, ident="run", check=plan.check,
                         envvars=ctx.env, timeout=plan.runbook.timeout, cancel=ctx.cancelled, lock_fd=ctx.lock_fd,
                         args=cmdline(plan.options, ctx.pdd, phase="run"))
    failed = next((n for n in tracker.order if tracker.steps[n].status is StepStatus.FAILED), None)
    if result.stopped == "timeout":
        ctx.bus.emit(Kind.NOTICE, level="error", message=f"the runbook's timeout ({plan.runbook.timeout} s) ran out"
                     + (f" in step {failed}" if failed else "") + ": the execution was stopped")
    elif result.rc != 0 and failed is None and not result.stopped:
        failed = _unstarted_failure(ctx, tracker, result)
    if failed is not None or result.rc != 0 or result.stopped:
        failed_step = failed
        outcome, rollback = saga.roll_back(ctx, tracker)
        if result.stopped == "cancelled" and outcome is not Outcome.ROLLBACK_FAILED:
            outcome = Outcome.INTERRUPTED  # 130: the operator stopped it (and what it changed was undone)
        elif tracker.tempfail and outcome in (Outcome.ROLLED_BACK, Outcome.FAILED):
            exit_code = ExitCode.TEMPFAIL  # a dependency was down: what changed is undone, retry later
    failed_hosts = tracker.steps[failed_step].failed_hosts if failed_step in tracker.steps else []
    return Verdict(outcome, failed_step, failed_hosts, {n: tracker.steps[n].status.value for n in tracker.order},
                   rollback, exit_code)


def _unstarted_failure(ctx: Context, tracker: Any, result: Any) -> str | None:
    """ansible failed outside any step (bad playbook, no hosts): say why."""
    stdout = result.artifact_dir / "stdout"
    tail = ""
    try:
        tail = "\n".join(stdout.read_text(errors="replace").strip().splitlines()[-8:])
    except OSError:
        pass
    ctx.bus.emit(Kind.NOTICE, level="error",
                 message=ctx.redactor.text(f"ansible-playbook exited {result.rc} ({result.status}): {tail}"))
    return tracker.order[-1] if tracker.order else None


def kinds_of(plan: Plan) -> dict[Any, list[Any]]:
    """Each step kind the plan uses, with its steps, in order of first use."""
    out: dict[Any, list[Any]] = {}
    for ps in plan.steps:
        out.setdefault(ps.kind, []).append(ps.step)
    return out


def resolve_secrets(plan: Plan, environ: dict[str, str] | None) -> Plan:
    """Front matter ``secrets: {name: "SCHEME:..."}``, read before anything runs by the kind owning SCHEME.

    Values live only in this process (the plan's params); a store that is down
    or a missing permission fails the run here, before any host is touched.
    """
    declared = plan.runbook.meta.get("secrets")
    if not isinstance(declared, dict):
        return plan
    values: dict[str, Any] = {}
    for kind in kinds.registry().values():
        if kind.secret_scheme:
            refs = {name: str(ref) for name, ref in declared.items() if str(ref).startswith(kind.secret_scheme + ":")}
            if refs:
                values.update(kind.resolve_secrets(refs, environ))
    return dataclasses.replace(plan, params={**plan.params, **values}) if values else plan


def redacted_params(plan: Plan) -> dict[str, Any]:
    """The parameters as the record keeps them: secrets masked, and so is a secret's value pasted into
    a public parameter (a DSN with the password in it)."""
    from technician_ops.engine.redact import MASK, Redactor

    declared = plan.runbook.secret_names()
    masked = {k: (MASK if k in declared and v is not None else v) for k, v in plan.params.items()}
    secrets = [str(v) for k, v in plan.params.items() if k in declared and v is not None]
    return dict(Redactor(secrets).obj(masked))
