"""One run's lifecycle, shared by ``run``, ``rollback RUN_ID`` and ``recover RUN_ID``.

    header -> lock -> inventory, preflight, private data dir, plan files
           -> record { RUN_START -> control server -> body -> scrub -> RUN_END } -> unlock

What differs between those commands is only the *body* (what executes inside
the record) and how its plan was built; everything around it is here, once:
a refusal before anything ran is still one record, a held lock is a
``skipped`` record, a crash of ours or Ctrl-C twice finishes the record as
``interrupted``, and the run's files are scrubbed of secret values on every
path out.  Step kinds are reached only through their hooks.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from technician_ops.engine.control import ENV_RUN_ID, ENV_STATE_DIR, LOCAL, ControlServer, Handler
from technician_ops.engine import environ
from technician_ops.engine.handlers import Emitter, Environ, Secrets
from technician_ops.engine.redact import MIN_LENGTH, Redactor
from technician_ops.engine.request import EXIT_FOR_OUTCOME, Cancelled, RunResult, utc_now
from technician_ops.errors import ConfigError, DependencyUnavailable, ExitCode, StorageError, TechnicianOpsError
from technician_ops.events import Bus, Kind
from technician_ops.outcomes import Outcome
from technician_ops.plan.compiler import Plan, default_forks
from technician_ops.plan.files import write_plan
from technician_ops.project import Project, ensure_private_dir
from technician_ops.runbook.model import Runbook

# Header fields a RUN_START event carries (``action``/``rollback_of`` only for undo runs).
_RUN_START = ("run_id", "runbook", "path", "check", "params", "operator", "origin", "controller", "started_at",
              "action", "rollback_of")


@dataclass
class Context:
    """What a body sees while it runs: the files, the environment for Ansible, the stream."""

    project: Project
    run_id: str  # this run's own id (an undo run's plan keeps the original run's)
    plan: Plan
    pdd: Path  # ansible-runner's private data dir
    files: dict[str, Path]
    inventories: list[Path]
    env: dict[str, str]  # for the Ansible process: control channel, run id, state dir
    bus: Bus
    redactor: Redactor
    cancelled: Cancelled | None
    lock_fd: int = -1  # the run lock, also held by each execution's supervisor (engine/supervise.py)
    # A run over execution nodes (docs/nodes.md): each node's session (engine/nodes.py), which host runs
    # on which node, every target, the inventory, and the gates' handler (engine/fanout.py).
    nodes: dict[str, Any] = field(default_factory=dict)
    assigned: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    inventory: Any = None
    gate_hub: Any = None


@dataclass
class Verdict:
    """How a body ended."""

    outcome: Outcome
    failed_step: str | None = None
    failed_hosts: list[str] = field(default_factory=list)
    steps: dict[str, str] = field(default_factory=dict)
    rollback: dict[str, Any] = field(default_factory=dict)
    exit_code: ExitCode | None = None  # when the outcome's own code would not tell the truth (a dependency down)


@dataclass
class Work:
    """What one session executes; ``engine.run`` and ``engine.past_runs`` build it."""

    plan: Plan
    header: dict[str, Any]
    body: Callable[[Context], Verdict]
    targets: Callable[[Any], list[str]]  # inventory -> the hosts to preflight and size forks for
    started: float = field(default_factory=time.monotonic)
    lock_wait: float = 0.0
    skip_preflight: bool = False
    accelerate: bool | None = False
    environ: dict[str, str] | None = None
    handlers: dict[str, Handler] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    check_inventory: Callable[[Any], None] | None = None
    after_run: bool = False  # call the kinds' after_run hooks (a forward run)


def header(runbook: Runbook, run_id: str, *, project: Project, environ: dict[str, str] | None, interactive: bool,
           check: bool, params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The record's header: who runs what, from where (the operator, the controller), when."""
    from technician_ops.engine.origin import controller, git_info, operator, origin

    return {"run_id": run_id, "runbook": runbook.name, "path": str(runbook.path), "runbook_sha256": runbook.sha256,
            "git": git_info(runbook.path), "operator": operator(), "origin": origin(environ, interactive=interactive),
            "controller": controller(project.controller_name), "check": check, "started_at": utc_now(),
            "params": dict(params or {}), **extra}


class Session:
    """Runs ``Work`` inside the lifecycle; one per run."""

    def __init__(self, project: Project, bus: Bus, audit: Any, cancelled: Cancelled | None = None) -> None:
        self.project, self.bus, self.audit, self.cancelled = project, bus, audit, cancelled
        self.masters: Any = None  # the run's SSH connections (ssh_masters.Masters), from preflight to the end
        self.accelerated = False
        self.assigned: dict[str, str] = {}  # host -> the execution node it runs on (none: here)
        self.targets: list[str] = []
        self.inventory: Any = None
        self.node_sessions: dict[str, Any] = {}  # node -> nodes.NodeSession, from preflight to the end

    def close_masters(self) -> None:
        sessions, self.node_sessions = list(self.node_sessions.values()), {}
        for session in sessions:  # first: a node's session ends before the master it runs over
            session.close()
        if self.masters is not None:
            masters, self.masters = self.masters, None
            masters.close()

    @contextmanager
    def refusing(self, head: dict[str, Any], why: str = "refused") -> Iterator[None]:
        """A ``TechnicianOpsError`` raised inside leaves a ``refused`` record: nothing ran."""
        try:
            yield
        except OSError as exc:  # the state dir cannot be written (full, read-only): say so, never crash
            error = StorageError.from_os(exc, "prepare the run's files")
            self._record_refusal(head, why, error)
            raise error from exc
        except TechnicianOpsError as exc:
            self._record_refusal(head, why, exc)
            raise

    def _record_refusal(self, head: dict[str, Any], why: str, exc: TechnicianOpsError, outcome: str = "refused") -> None:
        if self.audit is None:
            return
        try:
            self.audit.record_skipped(head, f"{why}: {exc.message}", outcome=outcome)
        except TechnicianOpsError as failed:  # e.g. the same full disk: the refusal itself still shows
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}the refusal could not be recorded: {failed.message}"

    def run(self, work: Work) -> RunResult:
        from technician_ops.engine.lock import RunLock

        lock = RunLock(self.project.state_dir / "locks", work.plan.runbook.lock)
        try:
            lock.acquire(work.lock_wait)
        except TechnicianOpsError as exc:
            self._record_refusal(work.header, "locked", exc, outcome="skipped")
            raise
        try:
            return self._locked(work, lock.fd)
        finally:
            self.close_masters()
            lock.release()

    def _locked(self, work: Work, lock_fd: int) -> RunResult:
        declared = work.plan.runbook.secret_names()
        redactor = Redactor([str(v) for k, v in work.plan.params.items() if k in declared and v is not None])
        self.bus.redactor = redactor
        plan, pdd, files, notices = self._prepare(work, redactor)
        from technician_ops.audit.sink import RunRecording

        # Leaving this block without record.finish() (a crash of ours, Ctrl-C twice)
        # finishes the record as "interrupted": it must not stay "running".
        with RunRecording(self.audit, work.header, self.bus) as record:
            self.bus.emit(Kind.RUN_START, **{k: work.header[k] for k in _RUN_START if k in work.header})
            for notice in notices:
                self.bus.emit(Kind.NOTICE, level="warning", message=notice)
            verdict = self._execute(work, plan, pdd, files, redactor, lock_fd)
            if work.after_run and verdict.outcome in (Outcome.SUCCEEDED, Outcome.ROLLED_BACK, Outcome.FAILED) \
                    and not plan.check:  # never when a human is needed: keep every backup
                for kind in {ps.kind.name: ps.kind for ps in plan.steps}.values():
                    for warning in kind.after_run(plan.runbook, self.project.state_dir, self.project.keep_backups):
                        self.bus.emit(Kind.NOTICE, level="warning", message=warning)
            exit_code = verdict.exit_code or EXIT_FOR_OUTCOME[verdict.outcome]
            duration = time.monotonic() - work.started
            self.bus.emit(Kind.RUN_END, run_id=work.header["run_id"], outcome=verdict.outcome.value,
                          exit_code=int(exit_code), ended_at=utc_now(), duration=round(duration, 3),
                          failed_step=verdict.failed_step, failed_hosts=verdict.failed_hosts)
            record.finish(verdict.outcome.value)
        return RunResult(work.header["run_id"], verdict.outcome, exit_code, verdict.failed_step, verdict.steps,
                         verdict.rollback, pdd / "artifacts", duration)

    def _prepare(self, work: Work, redactor: Redactor) -> tuple[Plan, Path, dict[str, Path], list[str]]:
        """Inventory, preflight, the private data dir and the plan's files; a failure is a ``refused`` record."""
        project, notices = self.project, list(work.notices)
        if redactor.short:
            notices.append(f"a secret value is shorter than {MIN_LENGTH} characters: it is masked wherever it appears "
                           "in output and messages, which can hide ordinary text too; use a longer secret")
        with self.refusing(work.header, "refused before any change"):
            inventory = load_inventory(project)
            if work.check_inventory is not None:
                work.check_inventory(inventory)
            targets = work.targets(inventory) if inventory is not None else []
            strategy_dir, not_accelerated = acceleration(work.accelerate, work.environ)
            notices += [not_accelerated] if not_accelerated else []
            base = base_config(project, work.environ)
            self.targets, self.inventory = targets, inventory
            if inventory is not None:
                from technician_ops.engine import nodes

                self.assigned = nodes.assign(targets, inventory, project)
                if self.assigned:
                    nodes.refuse_unsupported(work.plan, inventory, self.assigned)
                    if strategy_dir is not None:
                        notices.append("--accelerate: not over execution nodes; running with the linear strategy")
                        strategy_dir = None
            ssh_targets = [h for h in targets if h not in self.assigned and inventory.may_use_ssh(h)] \
                if inventory is not None else []
            if (ssh_targets or self.assigned) and strategy_dir is None:  # mitogen makes its own connections
                from technician_ops.engine import ssh_masters

                self.masters = ssh_masters.Masters(ssh_masters.control_dir())
        try:
            return self._prepare_files(work, inventory, targets, ssh_targets, strategy_dir, base, notices)
        except BaseException:
            self.close_masters()
            raise

    def _prepare_files(self, work: Work, inventory: Any, targets: list[str], ssh_targets: list[str],
                       strategy_dir: Path | None, base: Any,
                       notices: list[str]) -> tuple[Plan, Path, dict[str, Path], list[str]]:
        """Preflight (opening the run's SSH connections), then the run's directory and files."""
        project = self.project
        with self.refusing(work.header, "refused before any change"):
            become = uses_become(work.plan) if ssh_targets or self.assigned else False
            if not work.skip_preflight and ssh_targets:
                preflight(ssh_targets, inventory, self.masters, base, become=become)
            if self.assigned:
                self._open_nodes(work, inventory, base, notices, become=become)
            no_pipelining = self.masters.requiretty if self.masters is not None else []
            if no_pipelining:
                notices.append(f"sudo on {', '.join(no_pipelining)} needs a terminal (requiretty): "
                               "those hosts run without pipelining, each task a few round trips slower")
            pdd = ensure_private_dir(ensure_private_dir(ensure_private_dir(project.state_dir) / "runs") / work.header["run_id"])
            plan = sized(work.plan, project, inventory, targets, accelerated=strategy_dir is not None)
            self.accelerated = strategy_dir is not None
            files = write_plan(plan, pdd, project.state_dir, inventory.local_hosts_without_python() if inventory else [],
                               accelerate=strategy_dir, base_config=base, notices=notices,
                               control_dir=self.masters.directory if self.masters is not None else None,
                               no_pipelining=no_pipelining)
            if inventory is not None:
                write_limit(plan, inventory, pdd)
                inventory.save()
            work.header["artifact_dir"] = str(pdd)
            work.header["ansible_cfg"] = files["config"].read_text(encoding="utf-8")  # the settings it ran with
            if base is not None:
                work.header["ansible_cfg_base"] = base.describe()
            if project.inventory:  # what a later ``rollback RUN_ID``/``recover RUN_ID`` must run against
                from technician_ops.engine.inventory import sources

                work.header["inventory"] = sources(project.inventory)
        return plan, pdd, files, notices

    def _open_nodes(self, work: Work, inventory: Any, base: Any, notices: list[str], *, become: bool) -> None:
        """A session on each execution node that has hosts (engine/nodes.py): versions compared, its hosts
        checked from the node; a node or host that fails refuses the run before anything changes."""
        from technician_ops.engine import nodes, preflight as checks
        from technician_ops.plan.files import effective_ssh_args

        shares = nodes.participants_of(self.assigned, self.targets)
        self.masters.base_ssh_args = effective_ssh_args(base)  # keepalive (5 s x 3) on every node's connection
        for name, hosts in shares.items():
            if name != LOCAL and hosts:
                node = self.project.execution_nodes[name]
                session = nodes.NodeSession(node, nodes.node_spec(node, inventory), hosts)
                self.node_sessions[name] = session
                session.start(self.masters, checks.DEFAULT_TIMEOUT)
        problems: list[str] = []
        for name, session in self.node_sessions.items():
            specs = checks.specs(inventory, ":".join(session.hosts))
            problems += session.handshake(specs, become=become, timeout=checks.DEFAULT_TIMEOUT,
                                          ssh_args=self.masters.base_ssh_args)
        if problems and not work.skip_preflight:
            noun = "host" if len(problems) == 1 else "hosts"
            raise DependencyUnavailable("\n".join([f"preflight: {len(problems)} {noun} not reachable from their "
                                                    "execution node; nothing was changed", *(f"  {p}" for p in problems)]),
                                        hint="fix the hosts and run again, or pass --skip-preflight to run anyway")
        notices += [f"preflight (--skip-preflight): {p}" for p in problems]
        work.header["nodes"] = {name: s.describe() for name, s in self.node_sessions.items()}
        work.header["execution_nodes"] = ",".join(sorted(self.node_sessions))

    def _execute(self, work: Work, plan: Plan, pdd: Path, files: dict[str, Path], redactor: Redactor,
                 lock_fd: int) -> Verdict:
        """The body, with the control channel up; the run's files are scrubbed of secrets on every way out."""
        project = self.project
        try:
            from technician_ops.engine.fanout import GateHub

            gate_hub = GateHub()
            handlers: dict[str, Handler] = {"secret": Secrets(plan), "emit": Emitter(self.bus),
                                            "environ": Environ(environ.split(os.environ, {})[1]), "gate": gate_hub,
                                            **work.handlers}
            with ControlServer(handlers) as control:
                for name, session in self.node_sessions.items():  # each node its own token, over its master
                    session.env = session.forward(control.path, control.participant_token(name))
                env = {**control.env, ENV_RUN_ID: plan.run_id, ENV_STATE_DIR: str(project.state_dir),
                       "TECHNICIAN_OPS_PROJECT_ROOT": str(project.root)}
                if self.accelerated:  # over the caller's ANSIBLE_DEPRECATION_WARNINGS too (files.ACCELERATED_REQUIRED)
                    env["ANSIBLE_DEPRECATION_WARNINGS"] = "False"
                if self.masters is not None:  # over an ANSIBLE_SSH_CONTROL_PATH* of the caller's: the run's own
                    from technician_ops.plan.files import CONTROL_PATH

                    env.update(ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.masters.directory),
                               ANSIBLE_SSH_CONTROL_PATH=CONTROL_PATH)
                ctx = Context(project, work.header["run_id"], plan, pdd, files,
                              [*project.inventory, files["inventory"]], env, self.bus, redactor, self.cancelled, lock_fd,
                              dict(self.node_sessions), dict(self.assigned), list(self.targets), self.inventory,
                              gate_hub)
                return work.body(ctx)
        except KeyboardInterrupt:
            return Verdict(Outcome.INTERRUPTED)
        except OSError as exc:  # the state dir failed mid-run: what ran is not known to be undone
            self.bus.emit(Kind.NOTICE, level="error", message=str(StorageError.from_os(exc, "write the run's files")))
            return Verdict(Outcome.ROLLBACK_FAILED)
        finally:
            redactor.scrub_tree(pdd)


def base_config(project: Project, environ: dict[str, str] | None) -> Any:
    """The team's ansible.cfg that ``ansible-playbook`` would read here, parsed (None: there is none)."""
    from technician_ops.plan import ansible_config

    path = ansible_config.find(project.root, environ)
    return ansible_config.read(path) if path is not None else None


# -- the inventory side of a session ------------------------------------------------------


def load_inventory(project: Project) -> Any:
    """The project's ``inventory.Inventory`` (None without one), answering from the state dir's cache when unchanged."""
    if not project.inventory:
        return None
    from technician_ops.engine import inventory

    return inventory.load(project.inventory, project.state_dir / "cache")


def target_hosts(plan: Plan, inventory: Any) -> list[str]:
    """The inventory hosts the plan's steps run on, in step order (controller steps aside), within ``--limit``."""
    allowed = limit_hosts(plan, inventory)
    names: dict[str, None] = {}
    for ps in plan.steps:
        for pattern in plan.host_patterns(ps) or []:
            names.update(dict.fromkeys(h for h in inventory.hosts(pattern) if allowed is None or h in allowed))
    return list(names)


def limit_hosts(plan: Plan, inventory: Any) -> set[str] | None:
    """The inventory hosts ``--limit`` admits (None: no limit): Ansible's pattern, or ``@FILE`` of patterns."""
    limit = plan.options.limit
    if limit is None:
        return None
    from technician_ops.errors import ParameterError

    pattern = limit
    if limit.startswith("@"):
        from technician_ops.fsutil import read_regular

        try:
            lines = read_regular(Path(limit[1:]), 1 << 20).decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(f"--limit {limit}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        pattern = ",".join(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not pattern.strip() or set(pattern) & set("{}"):
        raise ParameterError(f"--limit {limit!r}: give a host pattern (web1, web:!web3, ...)")
    hosts = set(inventory.hosts(pattern))
    if not hosts:
        raise ParameterError(f"--limit {limit!r} matches no host in the inventory")
    return hosts


def check_targets(plan: Plan, inventory: Any) -> None:
    """Host parameters name inventory hosts, every step's hosts match some, and ``--limit`` leaves a target."""
    from technician_ops.errors import ParameterError

    if inventory is None:
        if any(not ps.kind.controller for ps in plan.steps):
            raise ConfigError("no inventory: the project has no inventory/ directory", hint="pass --inventory PATH")
        if plan.options.limit is not None:
            raise ParameterError("--limit needs an inventory")
        return
    known = set(inventory.all_hosts())
    for name, param in plan.runbook.params.items():
        value = plan.params.get(name)
        if param.type == "host" and value is not None and value not in known:
            raise ParameterError(f"parameter {name!r}: host {value!r} is not in the inventory ({', '.join(sorted(known)) or 'empty'})")
    for ps in plan.steps:
        if ps.kind.controller or ps.kind.own_hosts:
            continue
        if not inventory.hosts(ps.hosts):
            raise ParameterError(f"{plan.runbook.path}:{ps.step.line}: step {ps.name!r}: hosts {ps.hosts!r} match no host in the inventory")
    allowed = limit_hosts(plan, inventory)
    if allowed is not None and any(not ps.kind.controller for ps in plan.steps) and not target_hosts(plan, inventory) \
            and not any(plan.host_patterns(ps) is None for ps in plan.steps):
        raise ParameterError(f"--limit {plan.options.limit!r} leaves no host this runbook runs on")


def write_limit(plan: Plan, inventory: Any, directory: Path) -> None:
    """``--limit``'s hosts, resolved, as ansible-playbook's ``--limit @FILE`` reads them.  ``localhost`` is
    always in: the controller steps (approve, backup, vault...) run there and are not a target."""
    allowed = limit_hosts(plan, inventory)
    if allowed is not None:
        from technician_ops.plan.files import write_private
        from technician_ops.plan.options import LIMIT_FILE

        # An inventory host named localhost is a target like any other: only the implicit one is added.
        implicit = set() if "localhost" in inventory.all_hosts() else {"localhost"}
        write_private(directory / LIMIT_FILE, "".join(f"{h}\n" for h in sorted(allowed | implicit)))


def sized(plan: Plan, project: Project, inventory: Any, targets: list[str], *, accelerated: bool = False) -> Plan:
    """``plan`` with forks sized for ``targets`` (``compiler.default_forks``), unless the project sets forks."""
    if project.forks or inventory is None:
        return plan
    remote = accelerated or any(inventory.may_use_ssh(h) for h in targets)
    return dataclasses.replace(plan, forks=default_forks(len(targets), remote=remote))


def preflight(names: list[str], inventory: Any, masters: Any = None, base: Any = None, *, become: bool = False) -> None:
    """Every SSH target answers and authenticates before anything changes.

    With ``masters`` (ssh_masters.Masters), the check opens each host's connection for the run to reuse;
    hosts Ansible reaches otherwise (a password, mitogen...) get paramiko's check.
    """
    from technician_ops.engine import preflight as checks

    specs = checks.specs(inventory, ":".join(names))
    if not specs:
        return
    if masters is None:
        checks.ensure_reachable(specs)
        return
    from technician_ops.engine import ssh_masters
    from technician_ops.plan.files import effective_ssh_args

    masters.base_ssh_args = effective_ssh_args(base)
    via = [s for s in specs if ssh_masters.usable(s)]
    problems = masters.open(via, checks.DEFAULT_TIMEOUT, become=become)
    problems += checks.check_hosts([s for s in specs if not ssh_masters.usable(s)])
    if problems:
        raise checks.unreachable(problems, len(specs))


def uses_become(plan: Plan) -> bool:
    """Whether a step of ``plan`` asks for privilege escalation (preflight then checks sudo's requiretty)."""
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return any((k == "become" and v not in (False, "false", "no", None)) or walk(v) for k, v in node.items())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(plan.playbook())


def acceleration(wanted: bool | None, environ: dict[str, str] | None) -> tuple[Path | None, str | None]:
    """(mitogen's strategy dir, None) when ``--accelerate`` asks for it and mitogen can drive this
    Ansible; (None, the one-line notice) when it cannot; (None, None) when not asked."""
    if wanted is False:
        return None, None
    from technician_ops.engine import accelerate

    if not accelerate.wanted(wanted, environ if environ is not None else dict(os.environ)):
        return None, None
    found = accelerate.check()
    if not found.usable:
        return None, f"--accelerate: {found.reason}; running with the linear strategy"
    return found.strategy_plugins, None
