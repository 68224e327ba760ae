"""The Python API: one function per CLI command, each returning values.

    project = open_project()
    result = run(RunRequest(runbook="db-failover", params={"primary": "db1"}), project, sinks=[])

Only the CLI prints and exits; these functions raise ``TechnicianOpsError``s
and report a run's progress as events to the sinks they are given.  The
engine (``engine/``), the audit store (``audit/``) and the outputs
(``outputs/``) are reached through here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from technician_ops.engine.request import Prompt, RunRequest, RunResult, UndoRequest
from technician_ops.errors import Diagnostic, ExitCode, NotFound, PastRunError, TechnicianOpsError
from technician_ops.project import Project, load_project
from technician_ops.plan.loader import list_runbooks, load
from technician_ops.runbook.model import Runbook

if TYPE_CHECKING:
    from technician_ops.audit.chain import VerifyResult
    from technician_ops.events import Sink
    from technician_ops.outputs.schedule import ScheduleEntry
    from technician_ops.outputs.stats import StatsReport
    from technician_ops.steps.backup.controller import BackupEntry

__all__ = [
    "PastRunError", "Prompt", "RunRequest", "RunResult", "UndoRequest", "approval_steps", "approve_run", "audit_anchor",
    "audit_export", "audit_verify", "compile_runbook", "history", "hold_run", "inventory_name", "lint", "list_backups", "list_runbooks",
    "load", "open_audit", "open_project", "postmortem", "recover_run", "refuse_run", "report", "run_outcome", "rollback_run", "run", "run_command",
    "schedule", "schedule_export", "show", "stats", "triggered_runbooks",
]

Warn = Callable[[str], None]


def open_project(root: Path | str | None = None, **overrides: Any) -> Project:
    """The project at ``root`` (default: the nearest parent with runbooks/), with its configuration layers."""
    return load_project(Path(root) if root else None, **overrides)


@contextmanager
def _store(project: Project, audit: Any = None, *, reading: bool = False) -> Iterator[Any]:
    """``audit`` when given, else the project's own store, opened for the call and closed after it.

    A database error the store did not name (a deleted WAL, a full disk) becomes an ``AuditError``:
    it is the store's trouble, not a bug of ours.
    """
    if audit is not None:
        yield audit
        return
    from technician_ops.audit import open_store
    from technician_ops.errors import AuditError

    store = open_store(project.audit_url, project.root, reading=reading)
    try:
        yield store
    except (TechnicianOpsError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if not _database_error(exc):
            raise
        raise AuditError(f"the audit store {store.location} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         hint="check its disk and files; 'technician-ops audit verify' says whether it is intact") from exc
    finally:
        store.close()


def open_audit(project: Project) -> Any:
    """The project's audit store, opened for a caller that records many times (``serve``); close it after."""
    from technician_ops.audit import open_store

    return open_store(project.audit_url, project.root)


def _database_error(exc: BaseException) -> bool:
    import sqlite3

    return isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("psycopg")


# -- runbooks -------------------------------------------------------------------------------


@dataclass
class LintReport:
    files: list[Path]
    diagnostics: list[Diagnostic]
    skipped: list[Path] = field(default_factory=list)  # Markdown in a linted directory that is not a runbook

    @property
    def errors(self) -> int:
        return sum(d.severity == "error" for d in self.diagnostics)

    @property
    def warnings(self) -> int:
        return sum(d.severity == "warning" for d in self.diagnostics)


def lint(paths: list[str], project: Project, *, strict: bool = False, hosts: str | None = None) -> LintReport:
    """Every problem of the runbooks at ``paths`` (files or directories; default: runbooks/)."""
    from technician_ops.plan.loader import lint as lint_file, runbook_files

    files: list[Path] = []
    skipped: list[Path] = []
    for p in paths or [str(project.runbooks_dir)]:
        path = Path(p)
        if path.is_dir():  # a README or a docs page beside the runbooks is not one: skipped, and said
            ours, others = runbook_files(path)
            files.extend(ours)
            skipped.extend(others)
        else:  # named explicitly: linted as a runbook, whatever it holds
            files.append(path)
    return LintReport(files, [d for f in files for d in lint_file(f, project.root, strict=strict, hosts=hosts)], skipped)


@dataclass
class Shown:
    """What ``show NAME`` found: a runbook, or a run's audit record."""

    runbook: Runbook | None = None
    record: dict[str, Any] | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # step -> the host patterns it really targets


def show(name: str, project: Project) -> Shown:
    """A runbook by name or path, else a run by its id (a unique prefix is enough)."""
    try:
        runbook = load(name, project)
    except NotFound:
        if not (len(name) >= 6 and all(c in "0123456789abcdef-" for c in name.lower())):
            raise
        with _store(project, reading=True) as store:
            return Shown(record=store.get(name))
    return Shown(runbook=runbook, hosts=_step_hosts(runbook, project))


def _step_hosts(runbook: Runbook, project: Project) -> dict[str, str]:
    """What each step targets: a playbook step's plays pick their own hosts, whatever ``hosts=`` says."""
    from technician_ops import steps as kinds

    out: dict[str, str] = {}
    for step in runbook.steps:
        kind = kinds.registry()[step.kind]
        if kind.controller:
            out[step.name] = "controller"
        elif kind.own_hosts:
            patterns = kind.host_patterns(step, project.root)
            out[step.name] = ",".join(patterns) if patterns else "(set by the playbook at run time)"
        else:
            out[step.name] = step.hosts or runbook.hosts or "?"
    return out


def compile_runbook(name: str, project: Project, out_dir: Path, raw_params: dict[str, str], *,
                    check: bool = False) -> dict[str, Path]:
    """Write the playbook, inventory and ansible.cfg a run would use, and the undo plays of every step."""
    from technician_ops.engine.session import base_config, load_inventory, sized, target_hosts
    from technician_ops.plan.compiler import bind_plan
    from technician_ops.plan.files import write_plan, write_undo_playbook

    plan = bind_plan(load(name, project), project, raw_params, check=check)
    inventory = load_inventory(project)
    local: list[str] = []
    if inventory is not None:
        plan = sized(plan, project, inventory, target_hosts(plan, inventory))
        local = inventory.local_hosts_without_python()
    files = write_plan(plan, out_dir, project.state_dir, local, base_config=base_config(project, None))
    if inventory is not None:
        inventory.save()
    files["rollback"] = write_undo_playbook(plan, [(ps, [ps.hosts]) for ps in plan.steps if ps.has_undo],
                                            out_dir / "project" / "rollback.yml", "undo plays, as a full rollback runs them")
    return files


# -- runs -------------------------------------------------------------------------------------


def run(request: RunRequest, project: Project, sinks: list[Sink], *, audit: Any = None,
        cancelled: Callable[[], bool] | None = None) -> RunResult:
    """parse -> validate -> plan -> preflight -> execute -> (rollback) -> record (in ``audit``, when given)."""
    from technician_ops.engine.run import run as run_engine
    from technician_ops.events import Bus

    return run_engine(request, project, Bus(list(sinks)), audit, cancelled)


def run_command(request: RunRequest, project: Project, sinks: list[Sink], *, cancelled: Callable[[], bool] | None = None,
                junit: str | None = None, metrics_file: str | None = None, notify_url: str | None = None,
                warn: Warn | None = None) -> RunResult:
    """``technician-ops run``: recorded in the project's audit store, with the CI/cron outputs asked for.

    The outputs never change the outcome: their failures go to ``warn``.
    """
    from technician_ops.outputs.reports import Reports

    steps: list[str] | None = None
    name = request.runbook
    if junit:
        try:
            runbook = load(request.runbook, project)
            name, steps = runbook.name, [s.name for s in runbook.steps]
        except TechnicianOpsError:
            steps = None
    reports = Reports(name, steps, junit=junit, metrics=metrics_file, notify_url=notify_url, check=request.check)
    try:
        with _store(project) as store:
            result = run(request, project, [*sinks, *reports.sinks()], audit=store, cancelled=cancelled)
    except TechnicianOpsError as exc:
        _warn_all(warn, reports.finish(None, exc))
        raise
    _warn_all(warn, reports.finish(result, None))
    return result


def approval_steps(runbook: Runbook) -> list[str]:
    """The steps of ``runbook`` that ask a human (``approve``): an unattended start must wait for one."""
    from technician_ops import steps as kinds

    return [s.name for s in runbook.steps if (kind := kinds.get(s.kind)) is not None and kind.asks_operator]


def triggered_runbooks(project: Project, warn: Warn | None = None) -> list[Runbook]:
    """The runbooks with ``triggers:``, by name; an invalid runbook is skipped with a warning (``lint`` says why)."""
    from technician_ops.plan.loader import load_runbook, runbook_files

    found: list[Runbook] = []
    for path in runbook_files(project.runbooks_dir)[0]:
        try:
            runbook = load_runbook(path, project.root)
        except TechnicianOpsError as exc:
            _warn_all(warn, [f"skipping invalid runbook {path.name}: {exc.message.splitlines()[0]}"])
            continue
        if runbook.triggers:
            found.append(runbook)
    return sorted(found, key=lambda rb: rb.name)


def inventory_name(project: Project, name: str) -> str:
    """What ``name`` is in the project's inventory: ``host`` (one host), ``group`` (it names other hosts: a
    group), or ``""`` (nothing, or there is no inventory)."""
    from technician_ops.engine.session import load_inventory

    inventory = load_inventory(project)
    if inventory is None:
        return ""
    if name in inventory.all_hosts():
        return "host"
    return "group" if inventory.hosts(name) else ""


def hold_run(request: RunRequest, project: Project, reason: str, *, audit: Any = None) -> RunResult:
    """Record ``request`` as ``awaiting_approval``: nothing runs; ``approve_run`` releases it.

    Its parameters and hosts are checked now (a request that could never run is ``refused``, and raises).
    """
    from technician_ops.engine.run import hold
    from technician_ops.events import Bus

    with _store(project, audit) as store:
        return hold(request, project, Bus([]), store, reason)


def refuse_run(request: RunRequest, project: Project, reason: str, *, audit: Any = None) -> str:
    """Record that ``request`` was refused before anything ran, with ``reason``; the record's run id."""
    from technician_ops.engine.run import refuse

    with _store(project, audit) as store:
        return refuse(request, project, store, reason)


def approve_run(project: Project, run_id: str, *, user: str, sinks: list[Sink] | None = None, audit: Any = None,
                cancelled: Callable[[], bool] | None = None) -> RunResult:
    """Release a held (``awaiting_approval``) run: its saved request runs now as a new run, every approve
    step approved by ``user``; the new record's ``releases`` names the held run.

    Raises ``PastRunError`` when the run is not held, was already released, or its runbook changed since.
    A release refused or skipped before anything ran (a held lock, a host gone from the inventory) may be
    approved again.
    """
    from technician_ops.engine.run import release
    from technician_ops.events import Bus

    with _store(project, audit) as store:
        return release(project, run_id, user, Bus(list(sinks or [])), store, cancelled)


def _warn_all(warn: Warn | None, warnings: list[str]) -> None:
    for text in warnings:
        if warn is not None:
            warn(text)


def rollback_run(project: Project, run_id: str, *, yes: bool = False, prompt: Prompt | None = None,
                 sinks: list[Sink] | None = None, audit: Any = None, skip_preflight: bool = False,
                 cancelled: Callable[[], bool] | None = None, new_run_id: str | None = None) -> RunResult:
    """Undo an earlier *succeeded* run from its recorded backups and secret versions, as a run of its own."""
    return _undo(UndoRequest("rollback", run_id, yes, prompt, skip_preflight, new_run_id), project, sinks, audit,
                 cancelled)


def recover_run(project: Project, run_id: str, *, yes: bool = False, prompt: Prompt | None = None,
                sinks: list[Sink] | None = None, audit: Any = None, skip_preflight: bool = False,
                cancelled: Callable[[], bool] | None = None, new_run_id: str | None = None) -> RunResult:
    """Converge a run that was killed mid-way (record ``interrupted``): undo what it did."""
    return _undo(UndoRequest("recover", run_id, yes, prompt, skip_preflight, new_run_id), project, sinks, audit,
                 cancelled)


def _undo(request: UndoRequest, project: Project, sinks: list[Sink] | None, audit: Any,
          cancelled: Callable[[], bool] | None) -> RunResult:
    from technician_ops.engine.past_runs import undo_past_run
    from technician_ops.events import Bus

    with _store(project, audit) as store:
        return undo_past_run(request, project, Bus(list(sinks or [])), store, cancelled)


def list_backups(project: Project, run_id: str | None = None, *, verify: bool = True) -> list[BackupEntry]:
    """Stored backups (of one run, or all), each re-hashed unless ``verify`` is off."""
    from technician_ops.steps.backup.controller import list_backups as listing

    return listing(project.state_dir, run_id, verify=verify)


# -- the audit log ----------------------------------------------------------------------------


def run_outcome(project: Project, run_id: str, *, audit: Any = None) -> str | None:
    """The outcome of run ``run_id`` (``running`` while it runs), or None when the store has no such run."""
    with _store(project, audit, reading=True) as store:
        try:
            return str(store.get(run_id)["outcome"])
        except NotFound:
            return None


def history(project: Project, runbook: str | None = None, *, limit: int = 20, outcome: str | None = None,
            since: dt.datetime | None = None, controller: str | None = None) -> list[dict[str, Any]]:
    """Recent runs, newest first (of ``controller`` only, when given); a naive ``since`` is UTC."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    with _store(project, reading=True) as store:
        return list(store.history(runbook, limit=limit, outcome=outcome, since=since, controller=controller))


def audit_verify(project: Project, *, anchor: Path | None = None) -> VerifyResult:
    """Check the hash chain; raises ``AuditTampered`` (exit 65) naming the first bad record.

    ``anchor``: a file ``audit anchor`` wrote earlier; the chain must still hold the record it names,
    unchanged, so deleting the newest records (and moving the head back) or erasing the store is caught.
    """
    from technician_ops.errors import AuditTampered

    with _store(project, reading=True) as store:
        result = store.verify()
        if result.ok and anchor is not None:
            _check_anchor(store, _read_anchor(anchor), anchor)
    if not result.ok:
        raise AuditTampered(f"audit log is NOT intact: record seq {result.first_bad_seq} (run {result.first_bad_run_id}): "
                            f"{result.reason}; {result.checked} record(s) checked")
    return result


ANCHOR_FORMAT = "technician-ops-audit-anchor/1"


def audit_anchor(project: Project, out: Path) -> dict[str, Any]:
    """Write the chain head (seq, hash, run id) to ``out``: the witness a later ``audit verify --anchor`` needs.

    Keep it where whoever could rewrite the store cannot: another machine, a git note, a ticket.
    """
    import json

    from technician_ops.fsutil import atomic_write, regular_file_or_absent

    with _store(project, reading=True) as store:
        seq, digest, run_id = store.head()
        location = store.location
    anchor = {"format": ANCHOR_FORMAT, "store": location, "seq": seq, "hash": digest, "run_id": run_id,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    problem = regular_file_or_absent(out)
    if problem:
        from technician_ops.errors import UsageError

        raise UsageError(f"not writing the anchor: {problem}")
    atomic_write(out, (json.dumps(anchor, indent=2) + "\n").encode(), mode=0o644)
    return anchor


def _read_anchor(path: Path) -> dict[str, Any]:
    import json

    from technician_ops.errors import UsageError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the anchor {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT or not isinstance(data.get("seq"), int):
        raise UsageError(f"{path} is not an anchor written by 'technician-ops audit anchor'")
    return data


def _check_anchor(store: Any, anchor: dict[str, Any], path: Path) -> None:
    from technician_ops.errors import AuditTampered

    seq, digest = int(anchor["seq"]), str(anchor.get("hash"))
    head_seq = store.head()[0]
    if head_seq < seq:
        raise AuditTampered(f"audit log is NOT intact: the anchor {path} was taken at record seq {seq}, the chain "
                            f"now ends at seq {head_seq}: records after {head_seq} were deleted")
    if seq == 0:
        return
    sealed = store.sealed(seq)
    if sealed is None or sealed[0] != digest:
        raise AuditTampered(f"audit log is NOT intact: the anchor {path} names record seq {seq} with hash "
                            f"{digest[:16]}..., the chain holds "
                            + ("no such record" if sealed is None else f"hash {sealed[0][:16]}... there")
                            + ": records were deleted or rewritten since the anchor")


def report(project: Project, run_id: str, *, fmt: str = "md", out: Path | None = None, audit: Any = None) -> str:
    """The executed-runbook report of one run (a unique prefix of its id is enough): Markdown (``md``)
    or one self-contained HTML file (``html``).

    The runbook's text is read from the record's ``path`` (else the project's runbook of that name),
    and used even when it changed since the run, with a warning at the top; without it, the report is
    built from the record alone.  ``out``: also written there, atomically, mode 0600 (a run's outputs
    and errors are not for every local user).
    """
    from technician_ops.errors import StorageError, UsageError
    from technician_ops.fsutil import atomic_write, regular_file_or_absent
    from technician_ops.outputs.report import FORMATS
    from technician_ops.outputs.run_report import render

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r} ({', '.join(FORMATS)})")
    problem = regular_file_or_absent(out) if out is not None else None
    if out is not None and not problem and not out.absolute().parent.is_dir():
        problem = f"{out.absolute().parent} is not a directory"
    if problem:
        raise UsageError(f"not writing the report: {problem}")
    with _store(project, audit, reading=True) as store:
        record = store.get(run_id)
    text = render(record, fmt, project_root=project.root)
    if out is not None:
        try:
            atomic_write(out, text.encode("utf-8"), mode=0o600)
        except OSError as exc:
            import errno

            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            error = StorageError(f"cannot write the report to {out}: {exc.strerror or exc}",
                                 hint="free space on its disk and retry" if full else "check that its directory is writable")
            error.exit_code = ExitCode.TEMPFAIL if full else ExitCode.CONFIG
            raise error from None
    return text


def audit_export(project: Project, out: TextIO) -> int:
    """Every finished record in chain order, one canonical JSON object per line; returns how many."""
    with _store(project, reading=True) as store:
        return int(store.export_jsonl(out))


def postmortem(project: Project, run_ids: list[str], *, out: Path | None = None, audit: Any = None) -> str:
    """A blameless post-mortem draft (Markdown) from the records of ``run_ids`` (unique prefixes are enough).

    Runs in any order: the draft sorts them by start.  ``out``: also written there, atomically, 0600
    (it names hosts, operators and parameters, like the store).  Unknown ids raise ``NotFound``.
    """
    from technician_ops.errors import UsageError
    from technician_ops.outputs.postmortem import draft

    if not run_ids:
        raise UsageError("name at least one run id", hint="'technician-ops history' lists recent runs")
    if out is not None:
        _check_output(out, "the post-mortem")
    with _store(project, audit, reading=True) as store:
        records: dict[str, dict[str, Any]] = {}
        for run_id in run_ids:
            record = store.get(run_id)
            records.setdefault(str(record.get("run_id")), record)  # the same run named twice is drafted once
    text = draft(list(records.values()))
    if out is not None:
        _write_output(out, text.encode("utf-8"), mode=0o600, what="the post-mortem")
    return text


def stats(project: Project, runbook: str | None = None, *, since: dt.datetime | None = None,
          metrics_file: Path | None = None, audit: Any = None) -> StatsReport:
    """Per runbook: runs by outcome, rates, p50/p95 duration, recovery time (``outputs/stats.py`` says how).

    ``since``: runs started at or after it (naive: UTC).  ``metrics_file``: the same figures as
    Prometheus gauges, in a file of their own, replaced whole (docs/postmortem.md).
    """
    import time

    from technician_ops.outputs.stats import StatsReport, compute, write_metrics_file

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    with _store(project, audit, reading=True) as store:
        rows = store.run_rows(runbook, since)
    report = StatsReport(compute(rows), since=since, runbook=runbook)
    if metrics_file is not None:
        from technician_ops.errors import StorageError

        try:
            report.metrics_file = write_metrics_file(Path(metrics_file), report, time.time())
        except OSError as exc:
            raise StorageError.from_os(exc, f"write the metrics file {metrics_file}") from None
    return report


def _check_output(out: Path, what: str) -> None:
    """Refuse an output path that is not a regular file (or absent) in a directory, before any work."""
    from technician_ops.errors import UsageError
    from technician_ops.fsutil import regular_file_or_absent

    problem = (f"{Path(out).parent} is not a directory" if not Path(out).parent.is_dir()
               else regular_file_or_absent(Path(out)))
    if problem:
        raise UsageError(f"not writing {what}: {problem}")


def _write_output(out: Path, data: bytes, *, mode: int, what: str) -> None:
    from technician_ops.errors import StorageError
    from technician_ops.fsutil import atomic_write

    try:
        atomic_write(Path(out), data, mode=mode)
    except OSError as exc:
        raise StorageError.from_os(exc, f"write {what} to {out}") from None


# -- schedules --------------------------------------------------------------------------------


def schedule(project: Project, warn: Warn | None = None) -> list[ScheduleEntry]:
    """The runbooks with ``schedule:``; invalid runbooks are skipped with a warning."""
    from technician_ops.outputs.schedule import entries
    from technician_ops.plan.loader import load_runbook

    runbooks = []
    for path in sorted(project.runbooks_dir.glob("*.md")):
        try:
            runbooks.append(load_runbook(path, project.root))
        except TechnicianOpsError as exc:
            _warn_all(warn, [f"skipping invalid runbook: {exc.message.splitlines()[0]}"])
    return entries(project.root, runbooks)


def schedule_export(project: Project, fmt: str, *, binary: str, log_dir: Path | None = None, user: str | None = None,
                    warn: Warn | None = None) -> str | dict[str, str]:
    """Crontab text (``crontab``), an /etc/cron.d file (``cron.d``), or ``{unit file name: text}`` (``systemd``).

    Cron lines log to ``log_dir`` (default: the state dir's ``logs/``), systemd
    units to the journal unless ``log_dir`` is given; a relative ``log_dir`` is
    taken from the current directory.  ``user``: the cron.d user field
    (default: the current user) or the units' ``User=``; a user crontab has no
    user field, so ``crontab`` refuses one.
    """
    import shlex

    from technician_ops.errors import UsageError
    from technician_ops.outputs.schedule import current_user, export_cron_d, export_crontab, export_systemd

    if fmt not in ("crontab", "cron.d", "systemd"):
        raise UsageError(f"unknown schedule format {fmt!r} (crontab, cron.d, systemd)")
    if fmt == "crontab" and user is not None:
        raise UsageError("a user crontab has no user field: it runs as its owner",
                         hint=f"use --format cron.d --user {shlex.quote(user)}, or install it with "
                              f"crontab -u {shlex.quote(user)} -")
    items = schedule(project, warn)
    given = Path(log_dir).absolute() if log_dir is not None else None
    if fmt == "systemd":
        return export_systemd(items, technician_ops_bin=binary, project_root=project.root, log_dir=given, user=user)
    logs = given or project.state_dir / "logs"
    if fmt == "cron.d":
        return export_cron_d(items, technician_ops_bin=binary, project_root=project.root, log_dir=logs,
                             user=user if user is not None else current_user())
    return export_crontab(items, technician_ops_bin=binary, project_root=project.root, log_dir=logs)


# The building blocks a script may want beside the commands, loaded on first use (``--help`` and
# ``lint`` never pay for the engine's imports).
_BLOCKS = {
    "bind_plan": "technician_ops.plan.compiler", "write_plan": "technician_ops.plan.files",
    "load_inventory": "technician_ops.engine.session", "target_hosts": "technician_ops.engine.session",
    "sized": "technician_ops.engine.session", "EXIT_FOR_OUTCOME": "technician_ops.engine.request",
    "new_run_id": "technician_ops.audit",
}


def __getattr__(name: str) -> Any:
    module = _BLOCKS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
