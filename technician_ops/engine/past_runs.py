"""Undo an earlier run: ``backups list``, ``rollback RUN_ID`` and ``recover RUN_ID``.

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
converges the recorded intent with what Vault holds (see
:func:`_converge_vault`), then the step's normal undo restores the previous
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from technician_ops.runbook import loader
from technician_ops.plan.compiler import Plan, PlanStep, build_plan, dump_yaml
from technician_ops.engine.control import ENV_RUN_ID, ENV_STATE_DIR
from technician_ops.errors import ApprovalMissing, ExitCode, NotFound, ParameterError, TechnicianOpsError
from technician_ops.events import Bus, Kind, Outcome, Sink
from technician_ops.runbook.params import bind
from technician_ops.project import Project, ensure_private_dir
from technician_ops.engine.redact import Redactor

if TYPE_CHECKING:
    from technician_ops.api import RunResult
    from technician_ops.audit.sink import RunRecording

Prompt = Callable[[str, str], bool]  # (what, text) -> confirmed?

ROLLBACK = "rollback"
RECOVER = "recover"
_NO_NET_CHANGE = {"failed", "refused", "skipped", "rolled_back"}
_DONE_HOSTS = ("ok", "changed")


class PastRunError(TechnicianOpsError):
    """The named run cannot be undone as asked; nothing was changed."""

    exit_code = ExitCode.DATAERR


# ------------------------------------------------------------------ backups list


@dataclass(frozen=True)
class BackupEntry:
    """One stored artefact, and whether it still matches its recorded sha256."""

    run_id: str
    runbook: str
    host: str
    step: str
    kind: str  # "files" or "postgres"
    path: str
    sha256: str
    size: int
    created_at: float
    status: str  # "ok", "missing" or "corrupted"


def list_backups(project: Project, run_id: str | None = None, *, verify: bool = True) -> list[BackupEntry]:
    """Backups of one run (a unique run id prefix is enough) or of every run, oldest first.

    ``verify`` re-hashes every artefact, so the listing says which backups a
    rollback could actually restore from.
    """
    from technician_ops.steps.backup.store import BackupError
    from technician_ops.steps.backup.controller import store_for

    store = store_for(project.state_dir)
    wanted = _backup_run_id(store.root, run_id) if run_id else None
    out = []
    for rec in store.list(wanted):
        status = "ok"
        if verify:
            try:
                store.verify(rec)
            except BackupError:
                status = "missing" if not Path(rec.path).is_file() else "corrupted"
        step = rec.name.rsplit(".", 1)[0]
        out.append(BackupEntry(rec.run_id, rec.runbook, rec.host, step, rec.kind, rec.path, rec.sha256, rec.size,
                               rec.created_at, status))
    return out


def _backup_run_id(root: Path, prefix: str) -> str:
    key = prefix.strip().lower()
    runs = sorted(p.name for p in root.iterdir() if p.name.startswith(key)) if root.is_dir() else []
    if key in runs:
        return key
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise NotFound(f"no backups of run {prefix!r} in {root}", hint="'technician-ops backups list' shows every run's")
    raise NotFound(f"run id prefix {prefix!r} is ambiguous", hint="type more characters of the run id")


# ------------------------------------------------------------------ rollback / recover


@dataclass
class _Undo:
    """What undoing a past run will do, decided before anything changes."""

    action: str
    record: dict[str, Any]
    plan: Plan
    completed: list[tuple[PlanStep, list[str]]]
    notices: list[str] = field(default_factory=list)
    vault: list[dict[str, Any]] = field(default_factory=list)  # recovery decisions per vault step


def rollback_run(project: Project, run_id: str, *, yes: bool = False, prompt: Prompt | None = None,
                 sinks: list[Sink] | None = None, audit: Any = None, skip_preflight: bool = False,
                 cancelled: Callable[[], bool] | None = None,
                 new_run_id: str | None = None) -> RunResult:
    """Undo an earlier *succeeded* run from its recorded backups and secret versions.

    Refused (nothing changes) when the run did not succeed, was a dry run, was
    already rolled back, a later run of the same runbook changed things since
    (undo that one first), or a backup or vault state file it needs is missing
    or does not match the audit record.  Asks ``prompt`` unless ``yes``;
    without either it raises :class:`ApprovalMissing` (exit 5).  ``new_run_id``
    names the rollback's own run (default: a fresh UUIDv7).
    """
    return _undo_past_run(ROLLBACK, project, run_id, yes=yes, prompt=prompt, sinks=sinks or [], audit=audit,
                          skip_preflight=skip_preflight, cancelled=cancelled, new_run_id=new_run_id)


def recover_run(project: Project, run_id: str, *, yes: bool = False, prompt: Prompt | None = None,
                sinks: list[Sink] | None = None, audit: Any = None, skip_preflight: bool = False,
                cancelled: Callable[[], bool] | None = None,
                new_run_id: str | None = None) -> RunResult:
    """Converge a run that was killed mid-way (record ``interrupted``): undo what it did.

    Vault rotations caught between intent and publish are resolved against
    Vault's current version first; then the undo of every step that completed
    (and of an in-flight step whose kind undoes its own failure, like vault)
    runs newest first.  Same checks and confirmation as :func:`rollback_run`.
    """
    return _undo_past_run(RECOVER, project, run_id, yes=yes, prompt=prompt, sinks=sinks or [], audit=audit,
                          skip_preflight=skip_preflight, cancelled=cancelled, new_run_id=new_run_id)


def _undo_past_run(action: str, project: Project, run_id: str, *, yes: bool, prompt: Prompt | None,
                   sinks: list[Sink], audit: Any, skip_preflight: bool,
                   cancelled: Callable[[], bool] | None, new_run_id: str | None) -> RunResult:
    from technician_ops.api import utc_now
    from technician_ops.audit import new_run_id as make_run_id
    from technician_ops.engine.lock import RunLock
    from technician_ops.engine.origin import git_info, operator, origin

    started = time.monotonic()
    own_store = audit is None
    if own_store:
        from technician_ops.audit import open_store

        audit = open_store(project.audit_url, project.root)
    try:
        record = audit.get(run_id)
        undo = _prepare(action, project, record, audit)
        runbook = undo.plan.runbook
        new_id = new_run_id or make_run_id()
        header = {
            "run_id": new_id, "runbook": runbook.name, "path": str(runbook.path), "runbook_sha256": runbook.sha256,
            "git": git_info(runbook.path), "operator": operator(),
            "origin": origin(None, interactive=prompt is not None), "check": False, "started_at": utc_now(),
            "params": record.get("params") or {}, "action": action, "rollback_of": record["run_id"],
        }
        if not yes:
            text = _describe(undo)
            if prompt is None:
                reason = f"{action} of run {record['run_id']} needs confirmation and there is no terminal to ask"
                audit.record_skipped(header, f"refused: {reason}", outcome="refused")
                raise ApprovalMissing(reason, hint=f"pass --yes to {action} without asking")
            if not prompt(action, text):
                audit.record_skipped(header, f"refused: {action} not confirmed at the terminal", outcome="refused")
                raise ApprovalMissing(f"{action} of run {record['run_id']} was not confirmed: nothing changed")
        lock = RunLock(project.state_dir / "locks", runbook.lock)
        try:
            lock.acquire(0.0)
        except TechnicianOpsError as exc:
            audit.record_skipped(header, f"locked: {exc.message}", outcome="skipped")
            raise
        try:
            return _execute(undo, project, header, Bus(list(sinks)), audit, skip_preflight, cancelled, started)
        finally:
            lock.release()
    finally:
        if own_store:
            audit.close()


def _prepare(action: str, project: Project, record: dict[str, Any], audit: Any) -> _Undo:
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
    undo = _Undo(action, record, plan, completed, notices)
    _check_backups(undo, project)
    _check_vault(undo, project)
    if not undo.completed and not any("set" in d for d in undo.vault):
        raise PastRunError(f"run {run_id} completed no step that changed something: nothing to undo")
    return undo


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
    from technician_ops.api import resolve_vault_secrets

    path = Path(str(record.get("path") or ""))
    if not path.is_file():
        raise PastRunError(f"the runbook run {record['run_id']} used is gone: {path}",
                           hint="restore it (the record has its sha256 and git commit) and try again")
    runbook = loader.load_runbook(path, project.root)
    notices = []
    if record.get("runbook_sha256") and runbook.sha256 != record["runbook_sha256"]:
        notices.append(f"runbook {path} changed since run {record['run_id']} (sha256 {record['runbook_sha256'][:12]} "
                       f"then, {runbook.sha256[:12]} now): the undo blocks are taken from the current text")
    secret = runbook.secret_names()
    given = {k: v for k, v in (record.get("params") or {}).items() if k not in secret and v is not None}
    try:
        values = bind(runbook.params, given)  # secrets: TECHNICIAN_OPS_PARAM_<NAME>, never recorded
    except ParameterError as exc:
        raise ParameterError(f"cannot rebuild run {record['run_id']}'s parameters: {exc.message}", hint=exc.hint) from None
    plan = build_plan(runbook, project.root, values, inventory=project.inventory, run_id=record["run_id"],
                      state_dir=project.state_dir)
    if project.forks:
        object.__setattr__(plan, "forks", project.forks)
    resolve_vault_secrets(plan, None)
    return plan, notices


def _completed_steps(plan: Plan, record: dict[str, Any], *, include_in_flight: bool) -> list[tuple[PlanStep, list[str]]]:
    """(step, hosts) whose undo must run, in run order -- the same rule as a failing run's rollback."""
    by_name = {ps.name: ps for ps in plan.steps}
    recorded = sorted((record.get("steps") or {}).values(), key=lambda s: s.get("order", 0))
    completed: list[tuple[PlanStep, list[str]]] = []
    missing = []
    for entry in recorded:
        name = entry["name"]
        ps = by_name.get(name)
        hosts_rec = entry.get("hosts") or {}
        done = [h for h, r in hosts_rec.items() if r.get("status") in _DONE_HOSTS]
        in_flight = entry.get("status") != "succeeded"
        if ps is None:
            if any(r.get("changed") for r in hosts_rec.values()):
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
        changed = any(hosts_rec.get(h, {}).get("changed") for h in done)
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


def _check_backups(undo: _Undo, project: Project) -> None:
    """Every backup an undo restores from exists and hashes to what the audit record says."""
    from technician_ops.steps.backup.store import BackupError
    from technician_ops.steps.backup.controller import artefact_name, stored

    recorded = {(a.get("step"), a.get("host")): a for a in undo.record.get("artifacts", {}).get("backup", [])}
    problems = []
    keep: list[tuple[PlanStep, list[str]]] = []
    for ps, hosts in undo.completed:
        if ps.kind.name != "backup":
            keep.append((ps, hosts))
            continue
        source = "postgres" if "postgres" in ps.step.spec else "files"
        with_backup = []
        for host in hosts:
            art = recorded.get((ps.name, host))
            if art is None:
                if undo.action == RECOVER:
                    continue  # killed before this host's backup was recorded: nothing of it to restore
                problems.append(f"{host}: the record has no backup of step {ps.name}")
                continue
            try:
                rec = stored(project.state_dir, undo.record["run_id"], host, ps.name, source)
            except BackupError as exc:
                problems.append(f"{host}: {exc.message}")
                continue
            if rec.sha256 != art.get("sha256"):
                problems.append(f"{host}: backup {artefact_name(ps.name, source)} has sha256 {rec.sha256}, "
                                f"the audit record says {art.get('sha256')}")
                continue
            with_backup.append(host)
        if with_backup:
            keep.append((ps, with_backup))
    if problems:
        raise PastRunError(f"run {undo.record['run_id']} cannot be undone: its backups are missing or corrupted:\n  "
                           + "\n  ".join(problems), hint="nothing was changed; restore by hand from an older backup")
    undo.completed = keep


def _check_vault(undo: _Undo, project: Project) -> None:
    """Each vault step's state file exists and says what to restore; recovery decides here too."""
    from technician_ops.steps.vault import controller as vault_step

    keep: list[tuple[PlanStep, list[str]]] = []
    env = {ENV_RUN_ID: undo.record["run_id"], ENV_STATE_DIR: str(project.state_dir)}
    for ps, hosts in undo.completed:
        if ps.kind.name != "vault":
            keep.append((ps, hosts))
            continue
        path = vault_step.state_file(ps.name, env)
        state = vault_step.read_state(path)
        status = state["status"] if state else None
        if undo.action == ROLLBACK:
            if status != vault_step.ROTATED:
                what = "is missing" if state is None else f"says {status!r}"
                raise PastRunError(f"run {undo.record['run_id']} cannot be undone: the state file of vault step "
                                   f"{ps.name} ({path}) {what}, not 'rotated'",
                                   hint="nothing was changed; compare the secret's versions by hand")
            keep.append((ps, hosts))
            continue
        decision = _converge_vault(ps.name, path, state)
        undo.vault.append(decision)
        if decision["then"] == "undo":
            keep.append((ps, hosts))
    undo.completed = keep


def _converge_vault(step: str, path: Path, state: dict[str, Any] | None) -> dict[str, Any]:
    """Decide (reading only) what a killed rotation left, from its intent and Vault's current version.

    - no state file, or ``not_written``/``rolled_back``: nothing of ours is published;
    - ``intent``/``unknown`` and Vault still at ``from_version``: the write never happened -> ``not_written``;
    - ``intent``/``unknown`` and Vault at ``from_version + 1``: our check-and-set write landed but the
      process died before recording it -> treated as ours (``rotated``) and undone. A CAS write with
      ``cas=from_version`` is the only way *we* could have produced that version; another writer in the
      same window cannot be told apart, which the record says;
    - ``rotated``: ours; the undo's own check-and-set refuses if someone wrote after us;
    - anything else: refused, a human compares the versions.
    """
    from technician_ops.steps.vault import client as vault
    from technician_ops.steps.vault import controller as vault_step

    base: dict[str, Any] = {"step": step, "state_file": str(path)}
    if state is None or state["status"] in (vault_step.NOT_WRITTEN, vault_step.ROLLED_BACK):
        return {**base, "found": state["status"] if state else None, "then": "nothing"}
    where = f"{state['mount']}/{state['path']}"
    base.update(found=state["status"], mount=state["mount"], path=where, key=state["key"],
                from_version=int(state["old_version"]))
    if state["status"] == vault_step.ROTATED:
        return {**base, "new_version": state.get("new_version"), "then": "undo"}
    client = vault.connect(None)
    current = client.current_version(state["mount"], state["path"])
    old = int(state["old_version"])
    base["current_version"] = current
    if current == old:
        return {**base, "set": vault_step.NOT_WRITTEN, "then": "nothing"}
    if current == old + 1:
        existed = False
        if old:
            try:
                client.read(vault.SecretRef(state["mount"], state["path"], state["key"]), version=old)
                existed = True
            except vault.VaultSecretNotFound:
                existed = False
        return {**base, "set": vault_step.ROTATED, "new_version": current, "key_existed": existed, "then": "undo",
                "attribution": "by version number: the run recorded its intent at version "
                               f"{old} and died; version {current} is taken to be its write"}
    raise PastRunError(
        f"vault step {step}: {where} is at version {current}, the killed run recorded its intent at version {old}: "
        "more than one write happened since, which of them is ours cannot be told",
        hint=f"compare versions {old}..{current} of {where} and restore by hand; nothing was changed")


def _describe(undo: _Undo) -> str:
    rec = undo.record
    lines = [f"{undo.action} run {rec['run_id']} of {rec['runbook']} (started {rec.get('started_at')}, "
             f"{rec.get('outcome')}); undo, newest first:"]
    for ps, hosts in reversed(undo.completed):
        lines.append(f"  - {ps.name} ({ps.kind.name}) on {', '.join(hosts)}")
    for d in undo.vault:
        if d["then"] == "nothing":
            lines.append(f"  - vault step {d['step']}: nothing of it was published")
    lines.extend(f"warning: {n}" for n in undo.notices)
    return "\n".join(lines)


def _execute(undo: _Undo, project: Project, header: dict[str, Any], bus: Bus, audit: Any, skip_preflight: bool,
             cancelled: Callable[[], bool] | None, started: float) -> RunResult:
    from technician_ops.api import load_inventory, sized, write_plan
    from technician_ops.audit.sink import RunRecording

    plan, new_id = undo.plan, header["run_id"]
    redactor = Redactor([str(v) for k, v in plan.params.items() if k in plan.secret_names and v is not None])
    bus.redactor = redactor
    inventory = load_inventory(project)
    targets = sorted({h for ps, hosts in undo.completed if not ps.kind.controller for h in hosts})
    undo.plan = plan = sized(plan, project, inventory, targets)
    if not skip_preflight and inventory is not None and targets:
        from technician_ops.engine import preflight

        specs = inventory.preflight_specs(":".join(targets))
        if specs:
            preflight.ensure_reachable(specs)
    pdd = ensure_private_dir(ensure_private_dir(ensure_private_dir(project.state_dir) / "runs") / new_id)
    files = write_plan(plan, pdd, project.state_dir, inventory.local_hosts_without_python() if inventory else [])
    if inventory is not None:
        inventory.save()
    header["artifact_dir"] = str(pdd)
    # Leaving this block without record.finish() finishes the record as "interrupted".
    with RunRecording(audit, header, bus) as record:
        return _execute_recorded(undo, project, header, bus, record, redactor, pdd, files, cancelled, started)


def _execute_recorded(undo: _Undo, project: Project, header: dict[str, Any], bus: Bus, record: RunRecording,
                      redactor: Redactor, pdd: Path, files: dict[str, Path], cancelled: Callable[[], bool] | None,
                      started: float) -> RunResult:
    """The undo run itself, from RUN_START to the finished record."""
    from technician_ops.steps.vault import controller as vault_step
    from technician_ops.api import EXIT_FOR_OUTCOME, RunResult, Emitter, utc_now, SecretsHandler, write_private
    from technician_ops.engine.control import ControlServer

    plan, new_id, orig_id = undo.plan, header["run_id"], undo.record["run_id"]
    bus.emit(Kind.RUN_START, **{k: header[k] for k in ("run_id", "runbook", "path", "check", "params", "operator",
                                                        "origin", "started_at", "action", "rollback_of")})
    for notice in undo.notices:
        bus.emit(Kind.NOTICE, level="warning", message=notice)
    state_env = {ENV_RUN_ID: orig_id, ENV_STATE_DIR: str(project.state_dir)}
    for d in undo.vault:
        if "set" in d:  # the recovery's decision becomes the state file the undo reads
            path = Path(d["state_file"])
            state = vault_step.read_state(path) or {}
            extra = {"new_version": d["new_version"], "key_existed": d["key_existed"]} if "new_version" in d else {}
            vault_step.write_state(path, {**state, **extra, "status": d["set"], "recovered_by": new_id})
        bus.emit(Kind.ARTIFACT, type="secret_recovery", **{k: v for k, v in d.items() if k != "state_file"})
    outcome = Outcome.SUCCEEDED
    info: dict[str, Any] = {"steps": [], "outcome": None, "failures": []}
    try:
        if undo.completed:
            handlers = {"secret": SecretsHandler(plan), "emit": Emitter(bus)}
            with ControlServer(handlers) as control:  # type: ignore[arg-type]
                env = {**control.env, **state_env, "TECHNICIAN_OPS_PROJECT_ROOT": str(project.root)}
                playbook = pdd / "project" / "rollback.yml"
                write_private(playbook, f"# Generated by technician-ops: {undo.action} of run {orig_id}, newest first\n"
                       + dump_yaml(plan.rollback_playbook(undo.completed)))
                outcome, info = _run_undo(undo, pdd, playbook, [*project.inventory, files["inventory"]], env, bus,
                                          redactor, cancelled)
    except KeyboardInterrupt:
        outcome = Outcome.INTERRUPTED
    finally:
        redactor.scrub_tree(pdd)
    exit_code = EXIT_FOR_OUTCOME[outcome]
    duration = time.monotonic() - started
    bus.emit(Kind.RUN_END, run_id=new_id, outcome=outcome.value, exit_code=int(exit_code), ended_at=utc_now(),
             duration=round(duration, 3), failed_step=None, failed_hosts=[])
    record.finish(outcome.value)
    return RunResult(new_id, outcome, exit_code, None, {}, info, pdd / "artifacts", duration)


def _run_undo(undo: _Undo, pdd: Path, playbook: Path, inventories: list[Path], env: dict[str, str], bus: Bus,
              redactor: Redactor, cancelled: Callable[[], bool] | None) -> tuple[Outcome, dict[str, Any]]:
    """One execution of the undo plays; every host that did not come back clean is a failure."""
    from technician_ops.api import run_undo

    order = [ps.name for ps, _ in reversed(undo.completed)]
    bus.emit(Kind.ROLLBACK_START, steps=order)
    # The recorded hosts of an interrupted run may be patterns, not names.
    failures = run_undo(undo.completed, playbook, pdd, inventories, env, bus, redactor, cancelled, exact_hosts=False)
    if cancelled and cancelled():
        outcome = Outcome.INTERRUPTED
    else:
        outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.SUCCEEDED
    rb_outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.ROLLED_BACK
    bus.emit(Kind.ROLLBACK_END, outcome=rb_outcome.value, failures=failures, steps=order)
    return outcome, {"steps": order, "outcome": rb_outcome.value, "failures": failures}

