"""One phase of a run spread over execution nodes: a participant per place, gates between steps, one stream.

Without nodes a phase (the forward run, the undo) is one ansible-runner execution.  With them it is
one per *participant*: the controller's own (``local``: its hosts and the controller steps) and one
per node that has hosts, each on its share, all at once.  Each participant's playbook is the same
steps with a **gate** between consecutive ones (plan/compiler.py ``gate_play``); a gate's task asks
technician-ops, which answers once every participant's *event stream* has reached that gate (or the
participant ended).  So a step finishes everywhere before the next starts anywhere, and when one
participant fails a step (or is lost), the others stop at the next gate: the run then rolls back
everywhere, as one playbook would have ended at the failing step.  Undo plays get gates as well, so
undos run newest first across all places.

A node's execution is ansible-runner's streaming protocol over the node's master connection:
``transmit`` (the job: kwargs and a zip of a private data directory built for the node) into
``ssh … node_agent worker``, whose output the controller's ``process`` reads, through the same
event handler as a local execution.  A stream that ends without the worker's last word is a **lost
node**: the hosts it had in flight are ``unknown``, the other participants stop at the next gate,
and nothing is undone through it; the record names the node and a human is needed (exit 4).

Each participant has its own ``StepTracker``; a ``Merger`` makes one bus stream of them (a step
starts once; its host results and end go out when the gate after it passes, with ``node`` on each
host a node ran) and ``merged`` the step states the verdict and the saga read.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.channel import ENV_SOCKET, ENV_STATE_DIR, ENV_TOKEN
from technician_ops.engine.control import LOCAL
from technician_ops.engine.executor import ExecutionResult, StepTracker, _EventFiles, execute
from technician_ops.events import Kind
from technician_ops.plan.files import controller_inventory, write_private
from technician_ops.plan.options import EXTRA_VARS_FILE, cmdline
from technician_ops.runbook.yamlio import dump as dump_yaml
from technician_ops.state import HostStatus, StepState, StepStatus

PARTICIPANT_ENV = "TECHNICIAN_OPS_PARTICIPANT"
LIMIT = "limit.txt"  # a participant's hosts, for --limit @FILE
LOST_GRACE = 30.0  # seconds a node's stream may take to end after it was told to stop, before it is cut
LOST_AFTER = 30.0  # seconds of silence (its worker says it is alive every 5 s) after which a node is lost


@dataclass
class Share:
    """One participant of one phase: where it runs and on what."""

    name: str  # LOCAL or a node's name
    hosts: list[str]
    plays: list[dict[str, Any]]
    session: Any = None  # nodes.NodeSession (None: the controller itself)
    env: dict[str, str] = field(default_factory=dict)  # a node's control channel (its socket and token)


@dataclass
class FanoutResult(ExecutionResult):
    """What ``run_phase`` returns: an execution's result for the phase as a whole, and the lost nodes."""

    lost: dict[str, str] = field(default_factory=dict)  # node -> why its stream ended early


_STOPPED = {"cancelled": "the run was stopped", "timeout": "the runbook's timeout ran out",
            "interrupted": "technician-ops was interrupted"}


class Gates:
    """The barrier between steps for one phase: the control channel's ``gate`` requests wait here."""

    def __init__(self, participants: list[str], phase: str, stopping: Callable[[], str | None],
                 on_pass: Callable[[], None]) -> None:
        self.phase, self.stopping, self.on_pass = phase, stopping, on_pass
        self.reached = {p: 0 for p in participants}
        self.ended: dict[str, bool] = {p: False for p in participants}
        self.lost: dict[str, str] = {}
        self.decided: dict[int, tuple[bool, str]] = {}
        self._cond = threading.Condition()

    def arrived(self, participant: str, index: int) -> None:
        """``participant``'s stream reached gate ``index`` (the step before it is closed in its tracker)."""
        with self._cond:
            self.reached[participant] = max(self.reached[participant], index)
            self._cond.notify_all()

    def end(self, participant: str, lost: str | None = None) -> None:
        with self._cond:
            self.ended[participant] = True
            if lost is not None:
                self.lost[participant] = lost
            self._cond.notify_all()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The ``gate`` request of a participant's gate task: go or stop, once everyone is there."""
        who, index = request.get("participant"), int(request.get("index") or 0)
        if who not in self.reached or request.get("phase") != self.phase or index < 1:
            return {"ok": False, "error": f"no gate {index} of the {request.get('phase')} phase for {who}"}
        with self._cond:
            while index not in self.decided:
                why = self.stopping()
                if why is not None and (self.phase == "run" or why == "interrupted"):
                    self.decided[index] = (False, _STOPPED.get(why, why))
                elif all(self.ended[p] or self.reached[p] >= index for p in self.reached):
                    self.decided[index] = self._decide(index)
                    self.on_pass()
                else:
                    self._cond.wait(0.2)
        go, reason = self.decided[index]
        return {"ok": True, "go": go, "reason": reason}

    def _decide(self, index: int) -> tuple[bool, str]:
        if self.phase == "rollback":  # an undo goes on everywhere, whatever happened elsewhere
            return True, ""
        if self.lost:
            node = sorted(self.lost)[0]
            return False, f"execution node {node} was lost"
        early = sorted(p for p in self.reached if self.ended[p] and self.reached[p] < index)
        if early:
            return False, f"{'the controller' if early[0] == LOCAL else 'execution node ' + early[0]} stopped " \
                          f"before step {index + 1}"
        return True, ""


class Merger:
    """One bus stream from several participants' trackers (each tracker's "bus" is a ``sink``)."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.order: list[str] = []  # steps in the order they started anywhere
        self._lock = threading.Lock()
        self._tasks: set[tuple[str, str]] = set()
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._ends: dict[str, list[dict[str, Any]]] = {}

    def sink(self, participant: str) -> Any:
        merger = self

        class _Sink:
            def emit(self, event: Kind, /, **data: Any) -> None:
                merger._emit(participant, event, data)

        return _Sink()

    def _emit(self, participant: str, kind: Kind, data: dict[str, Any]) -> None:
        with self._lock:
            step = str(data.get("step"))
            if participant != LOCAL and kind in (Kind.HOST_RESULT, Kind.DIFF):
                data["node"] = participant
            if kind is Kind.STEP_START:
                if step not in self.order:
                    self.order.append(step)
                    self.bus.emit(kind, **data)
            elif kind is Kind.TASK_START:
                task = (step, str(data.get("task")))
                if task not in self._tasks:
                    self._tasks.add(task)
                    self.bus.emit(kind, **data)
            elif kind is Kind.HOST_RESULT:
                self._results.setdefault(step, []).append(data)
            elif kind is Kind.STEP_END:
                self._ends.setdefault(step, []).append(data)
            else:
                self.bus.emit(kind, **data)

    def flush(self) -> None:
        """Every step closed so far, as one step each: its host results, then its end."""
        with self._lock:
            for step in self.order:
                ends = self._ends.pop(step, None)
                if ends is None:
                    continue
                for data in sorted(self._results.pop(step, []), key=lambda d: str(d.get("host"))):
                    self.bus.emit(Kind.HOST_RESULT, **data)
                status = merged_status({str(e.get("status")) for e in ends}).value
                hosts = {h: s for e in ends for h, s in (e.get("hosts") or {}).items()}
                self.bus.emit(Kind.STEP_END, step=step, status=status, phase=ends[0].get("phase"),
                              duration=max(float(e.get("duration") or 0.0) for e in ends), hosts=hosts)


def merged_status(statuses: set[str]) -> StepStatus:
    """One step's status from its participants': failed anywhere, else succeeded anywhere, else skipped."""
    if StepStatus.FAILED.value in statuses:
        return StepStatus.FAILED
    return StepStatus.SUCCEEDED if StepStatus.SUCCEEDED.value in statuses else StepStatus.SKIPPED


@dataclass
class Merged:
    """The participants' step states as one execution's (what run._execute and the saga read of a tracker)."""

    steps: dict[str, StepState]
    order: list[str]
    tempfail: bool = False
    stopping: bool = False
    finished_cleanly: bool = False
    lost: dict[str, str] = field(default_factory=dict)  # host -> the lost node it was on


def merged(trackers: dict[str, StepTracker], order: list[str], lost: dict[str, str],
           shares: dict[str, list[str]]) -> Merged:
    steps: dict[str, StepState] = {}
    for i, name in enumerate(order):
        parts = [t.steps[name] for t in trackers.values() if name in t.steps]
        first = parts[0]
        state = StepState(name, first.kind, first.targets, first.phase, order=i)
        for part in parts:
            state.hosts.update(part.hosts)
        state.duration = max((p.duration or 0.0) for p in parts)
        state.status = merged_status({p.status.value for p in parts})
        steps[name] = state
    lost_hosts = {h: node for node in lost for h in shares.get(node, [])}
    return Merged(steps, list(order), any(t.tempfail for t in trackers.values()),
                  any(t.stopping for t in trackers.values()), all(t.finished_cleanly for t in trackers.values()),
                  lost_hosts)


def run_phase(ctx: Any, shares: list[Share], make_tracker: Callable[[Any], StepTracker], *, ident: str, phase: str,
              targets_by_step: dict[str, set[str]], cancellable: bool = True,
              timeout: int | None = None) -> tuple[FanoutResult, Merged]:
    """Run one phase on every participant at once (nodes in threads, the controller's own execution on
    this, the main, thread); return when all have ended."""
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    stop_reason: list[str] = []  # "cancelled", "timeout" or "interrupted" (a second Ctrl-C, a crash of ours)

    def stopping() -> str | None:
        if not stop_reason:
            if cancellable and ctx.cancelled is not None and ctx.cancelled():
                stop_reason.append("cancelled")
            elif deadline is not None and time.monotonic() >= deadline:
                stop_reason.append("timeout")
        return stop_reason[0] if stop_reason else None

    merger = Merger(ctx.bus)
    gates = Gates([s.name for s in shares], phase, stopping, merger.flush)
    trackers: dict[str, StepTracker] = {}
    for share in shares:
        tracker = make_tracker(merger.sink(share.name))
        tracker.on_gate = (lambda i, p=share.name: gates.arrived(p, i))
        trackers[share.name] = tracker
    ctx.gate_hub.current = gates
    results: dict[str, ExecutionResult] = {}
    lost: dict[str, str] = {}
    threads = []
    try:
        # Every node's job first: a failure here is the controller's (its disk), before anything starts anywhere.
        jobs = {share.name: node_directory(ctx, share, ident) for share in shares if share.session is not None}
        for share in shares:
            if share.session is not None:
                thread = threading.Thread(target=_remote, name=f"technician-ops-node-{share.name}", daemon=True,
                                          args=(ctx, share, jobs[share.name], trackers[share.name], gates, results,
                                                lost, ident, phase, stopping, targets_by_step))
                thread.start()
                threads.append(thread)
        local = next((s for s in shares if s.session is None), None)
        if local is not None:
            try:
                results[LOCAL] = _local(ctx, local, trackers[LOCAL], ident=ident, phase=phase, stopping=stopping,
                                        cancellable=cancellable, timeout=timeout)
            finally:
                gates.end(LOCAL)
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
                stopping()  # the nodes' watchers poll the same stop: a Ctrl-C here reaches them
    except BaseException:
        stop_reason.append("interrupted")
        for thread in threads:
            thread.join(LOST_GRACE + 30)
        raise
    finally:
        merger.flush()
        ctx.gate_hub.current = None
    shares_hosts = {s.name: s.hosts for s in shares}
    state = merged(trackers, merger.order, lost, shares_hosts)
    first = results.get(LOCAL) or next(iter(results.values()), None)
    failing = [r for r in results.values() if r.rc != 0]
    rc = max((r.rc for r in results.values()), default=0) if failing else 0
    stopped = next((r.stopped for r in results.values() if r.stopped), None) or (stop_reason[0] if stop_reason else None)
    shown = failing[0] if failing else first
    status = shown.status if shown is not None else "successful"
    artifact = shown.artifact_dir if shown is not None else ctx.pdd / "artifacts"
    return FanoutResult(rc, status, artifact, stopped, dict(lost)), state


def _local(ctx: Any, share: Share, tracker: StepTracker, *, ident: str, phase: str, stopping: Callable[[], str | None],
           cancellable: bool, timeout: int | None) -> ExecutionResult:
    directory = ctx.pdd
    playbook = directory / "project" / f"{ident}-local.yml"
    write_private(playbook, f"# Generated by technician-ops: the controller's share ({phase})\n" + dump_yaml(share.plays))
    limit = directory / f"{ident}-{LIMIT}"
    write_private(limit, _limit_text(share))
    args = [*_args(ctx.plan.options, directory, phase), "--limit", f"@{limit}"]
    env = {**ctx.env, PARTICIPANT_ENV: LOCAL}
    # Its own deadline stops it as "timeout" (execute); this, a stop of the run's or of ours.
    cancel = (lambda: stopping() in ("cancelled", "interrupted")) if cancellable else None
    return execute(directory, playbook, ctx.inventories, tracker, ident=ident, check=ctx.plan.check if phase == "run"
                   else False, envvars=env, timeout=timeout, cancel=cancel, lock_fd=ctx.lock_fd, args=args)


def _limit_text(share: Share) -> str:
    """A participant's ``--limit @FILE``: its hosts, and its implicit localhost (gates, controller steps)."""
    return "".join(f"{h}\n" for h in sorted({*share.hosts, "localhost"}))


def _args(options: Any, directory: Path, phase: str) -> list[str]:
    """ansible-playbook's arguments but the limit (each participant gets its own)."""
    return cmdline(dataclasses.replace(options, limit=None), directory, phase=phase)


def node_directory(ctx: Any, share: Share, ident: str) -> tuple[Path, list[str]]:
    """The private data directory transmitted to a node for one execution: its playbook, the run's
    parameters and ansible.cfg, the project's inventory (copied, so the node reads the same), its hosts as
    the limit.  Returns it and its inventory paths (relative to it)."""
    directory = ctx.pdd / "nodes" / share.name / ident
    shutil.rmtree(directory, ignore_errors=True)
    project = directory / "project"
    project.mkdir(parents=True, mode=0o700)
    write_private(project / "main.yml", f"# Generated by technician-ops: execution node {share.name}'s share\n"
                  + dump_yaml(share.plays))
    shutil.copy2(ctx.files["params"], project / "params.yml")
    shutil.copy2(ctx.files["config"], directory / "ansible.cfg")
    if (ctx.pdd / EXTRA_VARS_FILE).exists():
        shutil.copy2(ctx.pdd / EXTRA_VARS_FILE, directory / EXTRA_VARS_FILE)
    write_private(directory / LIMIT, _limit_text(share))
    inventories: list[str] = []
    for i, source in enumerate(ctx.project.inventory):
        target = directory / "inventory" / f"{i:02d}"
        if source.is_dir():
            shutil.copytree(source, target)
            inventories.append(str(target.relative_to(directory)))
        else:
            target.mkdir(parents=True)
            shutil.copy2(source, target / source.name)
            for beside in ("group_vars", "host_vars"):
                if (source.parent / beside).is_dir():
                    shutil.copytree(source.parent / beside, target / beside)
            inventories.append(str((target / source.name).relative_to(directory)))
    extra = directory / "inventory" / "zz-node.yml"
    write_private(extra, controller_inventory([], no_pipelining=share.session.requiretty))
    inventories.append(str(extra.relative_to(directory)))
    return directory, inventories


def _remote(ctx: Any, share: Share, job: tuple[Path, list[str]], tracker: StepTracker, gates: Gates,
            results: dict[str, ExecutionResult], lost: dict[str, str], ident: str, phase: str,
            stopping: Callable[[], str | None], targets_by_step: dict[str, set[str]]) -> None:
    """One node's execution, in its own thread: transmit, then process the worker's stream until it ends."""
    try:
        _remote_execution(ctx, share, job, tracker, results, lost, ident, phase, stopping, targets_by_step)
    finally:
        gates.end(share.name, lost=lost.get(share.name))


def _remote_execution(ctx: Any, share: Share, job: tuple[Path, list[str]], tracker: StepTracker,
                      results: dict[str, ExecutionResult], lost: dict[str, str], ident: str, phase: str,
                      stopping: Callable[[], str | None], targets_by_step: dict[str, set[str]]) -> None:
    from technician_ops.engine import ssh_masters

    why_lost: str | None = None
    artifact_dir = ctx.pdd / "artifacts" / f"{ident}@{share.name}"
    statuses: list[str] = []
    tail: list[bytes] = []  # the last of what the worker's ssh said on stderr
    proc = None
    directory, inventories = job
    try:
        check = ["--check"] if ctx.plan.check and phase == "run" else []
        args = [*check, *_args(ctx.plan.options, Path(".."), phase), "--limit", f"@../{LIMIT}"]
        # The controller's own places (its control socket and token, state dir, project, control path) are not
        # the node's: the node's channel comes from its session, the rest from its agent (node_agent.py).
        env = {k: v for k, v in ctx.env.items() if not k.startswith("ANSIBLE_SSH_CONTROL_PATH")
               and k not in (ENV_SOCKET, ENV_TOKEN, ENV_STATE_DIR, "TECHNICIAN_OPS_PROJECT_ROOT")}
        env.update(share.env)
        env[PARTICIPANT_ENV] = share.name
        # Its own session: a Ctrl-C at the terminal is technician-ops' to handle (it closes the stream and the
        # node stops), not ssh's to die of (the node would look lost).
        proc = subprocess.Popen(share.session.worker_argv(ident), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=ssh_masters.die_with_parent, start_new_session=True)
        threading.Thread(target=_drain, args=(proc, tail), name="technician-ops-node-stderr", daemon=True).start()
        stream = _Activity(proc.stdout)
        watcher = _Watcher(proc, stopping, tracker, stream)
        watcher.start()
        from ansible_runner.interface import run as runner_run

        try:
            # ansible-runner's transmit takes one inventory path; the node's agent reads the list (node_agent.py).
            runner_run(streamer="transmit", _output=proc.stdin, private_data_dir=str(directory), playbook="main.yml",
                       ident=ident, inventory=str(directory / "inventory"), technician_ops_inventory=inventories,
                       envvars=env, cmdline=shlex.join(args),
                       suppress_env_files=True, quiet=True, json_mode=False, fact_cache_type="none",
                       cancel_callback=lambda: False)
        except OSError:
            pass  # the worker is gone: the stream below says so
        stream.last = time.monotonic()  # its silence counts from here: nobody read it while the job went out
        events = _EventFiles(tracker)
        events.directory = artifact_dir / "job_events"
        runner_run(streamer="process", _input=stream, private_data_dir=str(directory),
                   artifact_dir=str(artifact_dir), quiet=True, event_handler=events.handle,
                   status_handler=lambda data, runner_config=None: statuses.append(str(data.get("status"))),
                   cancel_callback=lambda: False)
        watcher.close()
        rc_file = artifact_dir / "rc"
        if watcher.silent:
            why_lost, rc = f"it said nothing for {LOST_AFTER:g} s", 255
        elif not rc_file.is_file() or rc_file.is_symlink() or (statuses and statuses[-1] == "error"):
            why_lost = _last_words(proc, tail) or "its stream ended before the execution did"
            rc = 255
        else:
            text = rc_file.read_text(errors="replace").strip()
            rc = int(text) if text.isdigit() else 255
    except Exception as exc:  # the node could not even be given the job
        why_lost, rc = f"{type(exc).__name__}: {exc}", 255
    finally:
        if proc is not None:
            _end(proc)
    if why_lost is not None:
        lost[share.name] = why_lost
        tracker.stopping = True
        _mark_lost(tracker, share, targets_by_step, why_lost)
    tracker.finish(rc, stopped=why_lost is not None or bool(stopping()))
    results[share.name] = ExecutionResult(rc, statuses[-1] if statuses else "error", artifact_dir,
                                          stopping() if why_lost is None else None)


class _Activity:
    """A node's stream as the Processor reads it, with the time it last said anything (its worker says it is
    alive every few seconds while a task runs quietly)."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.last = stream, time.monotonic()

    def readline(self, *args: Any) -> bytes:
        line: bytes = self._stream.readline(*args)
        self.last = time.monotonic()
        return line

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.last = time.monotonic()
        return data

    def __getattr__(self, name: str) -> Any:  # write, close, closed, flush: Base64IO asks for them
        return getattr(self._stream, name)


class _Watcher(threading.Thread):
    """Closes a node's stream when the phase stops (the worker then stops its execution); cuts it when the
    worker does not end within its grace, or says nothing for LOST_AFTER (the node is then lost)."""

    def __init__(self, proc: subprocess.Popen[bytes], stopping: Callable[[], str | None], tracker: StepTracker,
                 stream: _Activity) -> None:
        super().__init__(name="technician-ops-node-watch", daemon=True)
        self.proc, self.stopping, self.tracker, self.stream = proc, stopping, tracker, stream
        self.silent = False
        self._done = threading.Event()

    def run(self) -> None:
        told: float | None = None
        while not self._done.wait(0.2):
            if time.monotonic() - self.stream.last > LOST_AFTER:
                self.silent = True
                self.proc.kill()  # the stream ends; the node is taken for lost
                return
            if told is None and self.stopping() is not None:
                told = time.monotonic()
                self.tracker.stopping = True
                # In a thread of its own: closing blocks while a transmit is still writing to a stuck node.
                threading.Thread(target=self._close_input, name="technician-ops-node-close", daemon=True).start()
            elif told is not None and time.monotonic() - told > LOST_GRACE:
                self.proc.kill()  # the stream ends; the node is taken for lost
                return

    def _close_input(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        self._done.set()


def _mark_lost(tracker: StepTracker, share: Share, targets_by_step: dict[str, set[str]], why: str) -> None:
    """The node's hosts of the step it was in: what that step did there is unknown."""
    current = tracker.current
    if current is None:
        return
    error = f"execution node {share.name} was lost mid-run ({why[:200]}): what this step did here is unknown"
    for host in sorted(targets_by_step.get(current.name, set()) & set(share.hosts)):
        state = current.hosts.get(host)
        if state is None or host in tracker._in_flight:
            current.host(host).merge(HostStatus.UNKNOWN, changed=None, error=error)
            tracker._in_flight.discard(host)


def _drain(proc: subprocess.Popen[bytes], tail: list[bytes]) -> None:
    """Read the worker's stderr as it comes (a full pipe would stall it), keeping its last 64 KiB."""
    stream: Any = proc.stderr
    for chunk in iter(lambda: stream.read1(65536), b""):
        tail.append(chunk)
        while sum(map(len, tail)) > 65536 and len(tail) > 1:
            tail.pop(0)


def _last_words(proc: subprocess.Popen[bytes], tail: list[bytes]) -> str:
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        return ""
    time.sleep(0.1)  # the drain's last read
    lines = [ln.strip() for ln in b"".join(tail).decode("utf-8", "replace").splitlines() if ln.strip()]
    return (lines[-1] if lines else f"its worker exited {proc.returncode}")[:300]


def _end(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin,):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()



class GateHub:
    """The control channel's ``gate`` handler for a whole run; each phase sets its ``Gates`` as current."""

    def __init__(self) -> None:
        self.current: Gates | None = None

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        gates = self.current
        if gates is None:
            return {"ok": False, "error": "no phase with gates is running"}
        return gates.handle(request)


def shares_of(ctx: Any, hosts: set[str] | None = None) -> dict[str, list[str]]:
    """{participant: its hosts} of the run (of ``hosts`` only, when given); nodes without hosts left out."""
    from technician_ops.engine.nodes import participants_of

    targets = [h for h in ctx.targets if hosts is None or h in hosts]
    out = participants_of(ctx.assigned, targets)
    return {name: found for name, found in out.items() if name == LOCAL or (found and name in ctx.nodes)}


def forward(ctx: Any, make_tracker: Callable[[Any], StepTracker]) -> tuple[FanoutResult, Merged]:
    """The forward run over the controller and the nodes."""
    plan = ctx.plan
    shares = []
    for name, hosts in shares_of(ctx).items():
        if name == LOCAL:
            if hosts or any(ps.kind.controller for ps in plan.steps):
                shares.append(Share(LOCAL, hosts, plan.participant_playbook(node=False)))
        else:
            session = ctx.nodes[name]
            shares.append(Share(name, hosts, plan.participant_playbook(node=True), session, session.env))
    return run_phase(ctx, shares, make_tracker, ident="run", phase="run", targets_by_step=_targets(ctx),
                     timeout=plan.runbook.timeout)


def undo(ctx: Any, completed: list[tuple[Any, list[str]]], stopped_hosts: list[str], lost: set[str],
         make_tracker: Callable[[Any], StepTracker], *, cancellable: bool) -> tuple[FanoutResult, Merged]:
    """The undo of ``completed`` over the participants whose hosts it touches (never a lost node's)."""
    touched = {h for _, hosts in completed for h in hosts} | set(stopped_hosts)
    shares = []
    for name, hosts in shares_of(ctx, touched).items():
        if name in lost:
            continue
        mine = set(hosts) | ({"localhost"} if name == LOCAL else set())
        part = [(ps, [h for h in hs if h in mine]) for ps, hs in completed]
        if not any(hs for _, hs in part) and not (set(stopped_hosts) & mine):
            continue
        plays = ctx.plan.rollback_playbook(part, sorted(set(stopped_hosts) & mine), gates=True)
        session = ctx.nodes.get(name)
        shares.append(Share(name, hosts, plays, session, session.env if session is not None else {}))
    return run_phase(ctx, shares, make_tracker, ident="rollback", phase="rollback", targets_by_step={},
                     cancellable=cancellable)


def _targets(ctx: Any) -> dict[str, set[str]]:
    """Each step's hosts (what a lost node's hosts of the step it was in become ``unknown`` from)."""
    out: dict[str, set[str]] = {}
    for ps in ctx.plan.steps:
        if ps.kind.controller:
            continue
        patterns = ctx.plan.host_patterns(ps) or [ps.hosts]
        out[ps.name] = {h for p in patterns for h in ctx.inventory.hosts(p)}
    return out
