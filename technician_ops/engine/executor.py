"""execute: one ansible-runner execution, its events folded into ours.

``StepTracker`` turns ansible-runner's per-task, per-host events into the
tool's per-step, per-host events.  Its work per event is O(1): it never
re-reads artifacts and keeps one small record per (step, host).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from technician_ops.engine import environ
from technician_ops.engine.redact import Redactor
from technician_ops.events import Bus, Kind
from technician_ops.state import OUTPUT_CAP, HostStatus, Output, StepState, clean_text
from technician_ops.plan.compiler import GATE_PLAY
from technician_ops.steps.base import PLUMBING

_SAID = re.compile(r"\s*(changed|ok): \[")
_UUID = re.compile(r"[A-Za-z0-9-]{1,64}")  # an event's uuid, as its file name takes it: no path in it
_STATUS = {
    "runner_on_ok": HostStatus.OK,
    "runner_on_failed": HostStatus.FAILED,
    "runner_on_unreachable": HostStatus.UNREACHABLE,
    "runner_on_skipped": HostStatus.SKIPPED,
}


class StepTracker:
    """Consumes ansible-runner events (``event_handler``) for one execution."""

    def __init__(self, bus: Bus, step_names: dict[str, str], phase: str, redactor: Redactor,
                 kinds_by_step: dict[str, str] | None = None, hosts_by_step: dict[str, str] | None = None,
                 quiet: frozenset[str] = frozenset(), conditions: dict[str, str] | None = None) -> None:
        self.bus = bus
        self.step_names = step_names  # play name -> step name
        self.phase = phase
        self.redactor = redactor
        self.kinds = kinds_by_step or {}
        self.patterns = hosts_by_step or {}
        self.steps: dict[str, StepState] = {}
        self.order: list[str] = []
        self.current: StepState | None = None
        self._started = 0.0
        self._in_flight: set[str] = set()  # hosts of the current step with a task started and no result yet
        self.tempfail = False  # a task failed because a dependency was down (retry later)
        # Set once technician-ops starts stopping the execution: a host whose task then fails or loses
        # its connection failed because of the stop (its ssh was killed), so what it did is unknown.
        self.stopping = False
        self.finished_cleanly = False
        self.quiet = quiet  # steps whose tasks' output is the tool's own plumbing (a backup's, a vault's)
        self._output: dict[str, Output] = {}  # host -> what the current step printed there
        self.conditions = conditions or {}  # step -> its when=: why a host the step skipped was skipped
        # A run over execution nodes (engine/fanout.py): called with a gate's index when this execution's
        # stream reaches it, after the step before it was closed here.
        self.on_gate: Callable[[int], None] | None = None

    # ansible-runner calls this for every event; returning True keeps it on disk.
    def handle(self, event: dict[str, Any]) -> bool:
        etype = event.get("event", "")
        data = event.get("event_data") or {}
        if etype == "playbook_on_play_start":
            name = data.get("play") or data.get("name") or ""
            step = self.step_names.get(name)
            gate = name.rsplit(" ", 1)[-1] if step is None and name.startswith(GATE_PLAY) else ""
            if gate.isdigit() and self.on_gate is not None:
                self._close()
                self.on_gate(int(gate))
            elif step is not None:
                self._close()
                if step in self.steps:  # the next batch of a serial step: the same step goes on
                    self.current = self.steps[step]
                else:
                    self.current = StepState(step, self.kinds.get(step, ""), self.patterns.get(step, ""),
                                             self.phase, order=len(self.order))
                    self._started = time.monotonic()
                    self.steps[step] = self.current
                    self.order.append(step)
                self.bus.emit(Kind.STEP_START, step=step, kind=self.kinds.get(step, ""), hosts=self.patterns.get(step, ""),
                              phase=self.phase)
        elif etype == "playbook_on_task_start" and self.current is not None:
            task = data.get("task") or ""
            if task and task != self.current.name and not task.startswith(("undo failed", PLUMBING)):
                self.bus.emit(Kind.TASK_START, step=self.current.name, task=self.redactor.text(task), phase=self.phase)
        elif etype.startswith("runner_on_") and self.current is not None and "host" in data \
                and not str(data.get("task") or "").startswith(PLUMBING):
            self._host_event(etype, data, event.get("stdout"))
        elif etype == "playbook_on_stats":
            self.finished_cleanly = True
            self._close()
        return True

    def _host_event(self, etype: str, data: dict[str, Any], stdout: Any = None) -> None:
        assert self.current is not None
        host = data["host"]
        agg = self.current.host(host)
        status = _STATUS.get(etype)
        if status is None:  # runner_on_start: a task is in flight there
            if etype == "runner_on_start":
                self._in_flight.add(host)
            return
        self._in_flight.discard(host)
        res = data.get("res") or {}
        if status is HostStatus.OK and res.get("changed"):
            status = HostStatus.CHANGED
        broken = status in (HostStatus.FAILED, HostStatus.UNREACHABLE)
        if broken and self.stopping:  # not the host's doing: recorded unknown, undone, never "dead"
            agg.merge(HostStatus.UNKNOWN, changed=None, duration=float(data.get("duration") or 0.0),
                      error="stopped while a task was running here")
            return
        if broken and res.get("technician_ops_tempfail"):
            self.tempfail = True
        changed: bool | None = bool(res.get("changed"))
        dropped = not res and status is not HostStatus.SKIPPED  # ansible-runner dropped a result over MAX_EVENT_RES
        if (res.get("censored") or dropped) and "changed" not in res:
            # ansible-runner's event of a no_log result keeps nothing but "censored" (and one too large
            # nothing at all); Ansible's own line for it still says "changed: [host]" or "ok: [host]".
            # Neither: nobody can tell, and an undo runs.
            said = _SAID.match(str(stdout or ""))
            changed = None if said is None else said.group(1) == "changed"
            if changed:
                status = HostStatus.CHANGED
        agg.merge(status, changed=changed,
                  duration=float(data.get("duration") or 0.0), error=self._error(res, data) if broken else None,
                  ignored=broken and bool(data.get("ignore_errors") or res.get("skip_reason")))
        if status is HostStatus.SKIPPED:
            # ansible-runner's skipped event carries no result; the step's own condition is the reason
            condition = res.get("false_condition") or self.conditions.get(self.current.name)
            if condition is not None and agg.reason is None:
                agg.reason = self.redactor.text(f"when: {condition} was false")[:500]
        elif not res.get("censored") and self.current.name not in self.quiet:
            if dropped:
                output = self._output.setdefault(host, Output())
                output.msg = f"the task's result was larger than {MAX_EVENT_RES} characters: its output is not kept"
            if self._collect(host, res, data):
                _shrink(res)
        if res.get("diff") and not res.get("censored"):  # --diff (or a task's diff: true)
            text = unified_diff(res["diff"])
            if text:
                self.bus.emit(Kind.DIFF, step=self.current.name, host=host, task=self.redactor.text(str(data.get("task") or "")),
                              diff=self.redactor.text(text), phase=self.phase)

    def _collect(self, host: str, res: dict[str, Any], data: dict[str, Any]) -> bool:
        """Keep what a task printed on ``host`` (its stdout/stderr; a debug's ``msg``; a failure's reason).
        True when a stream was longer than the record keeps (the event is then cut too: ``_shrink``)."""
        long = False
        results = res.get("results")
        items: list[Any] = results if isinstance(results, list) else [res]
        output = self._output.get(host)
        for item in items:
            if not isinstance(item, dict):
                continue
            for stream in ("stdout", "stderr"):
                text = item.get(stream)
                if isinstance(text, str) and text:
                    if output is None:
                        output = self._output[host] = Output()
                    output.add(stream, self.redactor.text(text))
                    long = long or len(text) > OUTPUT_CAP
        action = str(data.get("task_action") or "")
        msg = res.get("msg")
        if msg and (action.endswith("debug") or res.get("failed")):
            if output is None:
                output = self._output[host] = Output()
            output.msg = clean_text(self.redactor.text(msg if isinstance(msg, str) else repr(msg)))[:4096]
        if isinstance(res.get("rc"), int):
            if output is None:
                output = self._output[host] = Output()
            output.rc = res["rc"]
        return long

    def _error(self, res: dict[str, Any], data: dict[str, Any]) -> str:
        if res.get("censored"):
            return f"task {data.get('task', '')!r} failed (output hidden: it uses a secret)"
        parts = [str(res.get("msg") or "").strip()]
        stderr = str(res.get("stderr") or "").strip()
        if stderr and stderr not in parts[0]:
            parts.append(stderr[-500:])
        if res.get("rc") not in (None, 0):
            parts.append(f"rc={res['rc']}")
        text = "; ".join(p for p in parts if p) or "failed"
        task = data.get("task")
        if task:
            text = f"{task}: {text}"
        return self.redactor.text(text)[:2000]

    def _close(self, *, aborted: bool = False) -> None:
        run = self.current
        if run is None:
            return
        self.current = None
        for host in sorted(self._in_flight):  # stopped mid-task: nobody knows what it did there
            run.host(host).merge(HostStatus.UNKNOWN, changed=None, error="stopped while a task was running here")
        self._in_flight.clear()
        run.duration = time.monotonic() - self._started
        run.close(aborted=aborted)
        for host, agg in run.hosts.items():
            output = self._output.get(host)
            agg.output = output.to_record() if output else None
            self.bus.emit(Kind.HOST_RESULT, step=run.name, host=host, status=agg.status.value, changed=agg.changed,
                          changed_unknown=agg.changed_unknown, duration=round(agg.duration or 0.0, 3), error=agg.error,
                          phase=self.phase, output=agg.output, reason=agg.reason)
        self._output = {}
        self.bus.emit(Kind.STEP_END, step=run.name, status=run.status.value, duration=round(run.duration, 3),
                      phase=self.phase, hosts={h: a.status.value for h, a in run.hosts.items()})

    def finish(self, rc: int, *, stopped: bool = False) -> None:
        """After the execution returned: close a step the run died (or was stopped) inside."""
        self._close(aborted=rc != 0 or stopped)


MAX_DIFF = 64 * 1024  # characters of one task's diff kept in an event
# ansible-runner replaces a task result longer than this (as text) with {} (its MAX_EVENT_RES, 700,000 by
# default): raised so that a long output still reaches us whole, to be counted, hashed and cut to its
# head and tail (state.Output); the event kept on disk is cut the same way (_shrink).
MAX_EVENT_RES = 64 * 1024 * 1024


def _shrink(res: dict[str, Any]) -> None:
    """Cut a result's long streams before ansible-runner writes the event to its artifacts (it writes the
    very dict the handler saw): the job_events files stay small whatever a host printed."""
    for item in (res, *(r for r in res.get("results") or [] if isinstance(r, dict))):
        for key in ("stdout", "stderr"):
            text = item.get(key)
            if isinstance(text, str) and len(text) > OUTPUT_CAP:
                half = OUTPUT_CAP // 2
                item[key] = f"{text[:half]}\n[... {len(text) - OUTPUT_CAP} characters cut ...]\n{text[-half:]}"
                item.pop(f"{key}_lines", None)


def unified_diff(diff: Any) -> str:
    """Ansible's diff result (``before``/``after`` with headers, or ``prepared`` text; one or a list)
    as the unified text ansible-playbook --diff prints."""
    import difflib

    parts: list[str] = []
    for item in diff if isinstance(diff, list) else [diff]:
        if not isinstance(item, dict):
            continue
        if item.get("prepared"):
            parts.append(str(item["prepared"]).rstrip("\n"))
            continue
        before, after = item.get("before"), item.get("after")
        if before is None and after is None:
            continue
        if not isinstance(before, str) or not isinstance(after, str):  # e.g. file state: {"state": "absent"}
            parts.append(f"--- {item.get('before_header', 'before')}\n+++ {item.get('after_header', 'after')}\n"
                         f"-{before!r}\n+{after!r}")
            continue
        lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                     str(item.get("before_header") or "before"), str(item.get("after_header") or "after"))
        parts.append("".join(lines).rstrip("\n"))
    text = "\n".join(p for p in parts if p)
    return text if len(text) <= MAX_DIFF else text[:MAX_DIFF] + f"\n[... diff cut at {MAX_DIFF} characters]"


@dataclass
class ExecutionResult:
    rc: int
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    artifact_dir: Path
    stopped: str | None = None  # why technician-ops stopped the execution: "cancelled", "timeout"; None: it ended


STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to the execution's processes


def execute(
    private_data_dir: Path,
    playbook: Path,
    inventory: list[Path],
    tracker: StepTracker,
    *,
    ident: str,
    check: bool,
    envvars: dict[str, str],
    timeout: int | None = None,
    cancel: Callable[[], bool] | None = None,
    lock_fd: int = -1,
    grace: float = STOP_GRACE,
    args: list[str] | None = None,
) -> ExecutionResult:
    """One ansible-runner execution under ``supervise.py``; returns when every process of it is gone.

    ``cancel`` (polled) or ``timeout`` (seconds) stop it: the supervisor
    TERMs, then KILLs, every process below it and exits once none is left;
    hosts with a task in flight then are ``unknown`` (``StepTracker.finish``).
    ``args``: more ansible-playbook arguments (``plan.options.cmdline``).
    ``lock_fd`` is held by the supervisor too, so the run's lock outlives a
    technician-ops killed outright until the execution is gone.
    """
    from technician_ops.engine.runner_pty import Supervision, spawn_without_close_delay, supervise

    spawn_without_close_delay()
    cmdline = [*(["--check"] if check else []), *(args or [])]
    bindir = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        "ANSIBLE_CONFIG": str(private_data_dir / "ansible.cfg"),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "ANSIBLE_NOCOLOR": "1",
        "MAX_EVENT_RES": os.environ.get("MAX_EVENT_RES", str(MAX_EVENT_RES)),
        **envvars,
    }
    events = _EventFiles(tracker)
    supervision = Supervision(lock_fd, grace)
    stopper = _Stopper(supervision, cancel, timeout, tracker)
    supervise(supervision)
    stopper.start()
    try:
        from ansible_runner.interface import init_runner

        runner = init_runner(
            private_data_dir=str(private_data_dir),
            playbook=str(playbook),
            ident=ident,
            cmdline=" ".join(_quote(c) for c in cmdline) or None,
            inventory=[str(i) for i in inventory],
            envvars=env,
            event_handler=events.handle,
            # Ours does the stopping (_Stopper); given none, ansible-runner would install SIGTERM/SIGINT
            # handlers of its own and kill only its direct child.  Should ansible-runner ever start its
            # child without our supervisor (runner_pty could not hook its spawn), its own cancel is the
            # fallback: a stop still stops the run, if less thoroughly.
            cancel_callback=lambda: stopper.reason is not None and supervision.pid is None,
            quiet=True,
            suppress_env_files=True,
            json_mode=False,
            # Not ansible-runner's per-run jsonfile cache (artifacts/<ident>/fact_cache,
            # forced through the environment): the run's ansible.cfg decides, so
            # facts are cached across runs under the state dir (files.ansible_cfg).
            fact_cache_type="none",
        )
        # What the execution (and ansible-runner's artifacts/<ident>/command) gets: no credentials.
        runner.config.env, _ = environ.split(runner.config.env, env)
        events.directory = Path(runner.config.artifact_dir) / "job_events"
        runner.run()
    except BaseException:  # a second Ctrl-C, a crash of ours: stop the execution before anything else
        stopper.stop_now("interrupted")
        raise
    finally:
        supervise(None)
        stopper.close()
    rc = runner.rc if isinstance(runner.rc, int) else 1
    tracker.finish(rc, stopped=stopper.reason is not None)
    return ExecutionResult(rc, str(runner.status), Path(runner.config.artifact_dir), stopper.reason)


class _EventFiles:
    """The event handler ansible-runner calls: the tracker's, then the event's file written here.

    ansible-runner writes each event it is told to keep (``N-UUID.json``, what
    ``past_runs`` replays after a crash) with ``json.dump`` into a ``codecs``
    writer, a call per JSON token: 0.3-0.7 ms of the controller's CPU per
    event, most of the tool's own share of a run over many hosts.  The same
    file, written here from one ``json.dumps`` (the handler returns False, so
    ansible-runner does not write it again), costs under half of that.
    """

    def __init__(self, tracker: StepTracker) -> None:
        self.tracker = tracker
        self.directory: Path | None = None  # the execution's job_events/ (known once ansible-runner set up)

    def handle(self, event: dict[str, Any]) -> bool:
        self.tracker.handle(event)
        if self.directory is None or "uuid" not in event:
            return True  # not set up as expected: ansible-runner writes it, as before
        counter, uuid = event.get("counter"), str(event["uuid"])
        if not isinstance(counter, int) or not _UUID.fullmatch(uuid):
            return False  # not an event ansible-runner made (a node's stream is another machine's words): no file
        import json

        path = self.directory / f"{counter}-{uuid}.json"
        temporary = path.with_name(path.name + ".tmp")
        try:
            data = json.dumps(event).encode("utf-8")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except (OSError, TypeError, ValueError):
            return True  # let ansible-runner try (and report) as it would have
        return False


class _Stopper(threading.Thread):
    """Watches for a cancel or the deadline and tells the supervisor to stop the execution."""

    def __init__(self, supervision: Any, cancel: Callable[[], bool] | None, timeout: int | None,
                 tracker: StepTracker) -> None:
        super().__init__(name="technician-ops-stopper", daemon=True)
        self.supervision, self.cancel, self.tracker = supervision, cancel, tracker
        self.deadline = time.monotonic() + timeout if timeout else None
        self.reason: str | None = None
        self._signalled = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            if self.cancel is not None and self.cancel():
                self.stop_now("cancelled")
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.stop_now("timeout")
            if self.reason is not None:
                self._signal()
                if self._signalled:
                    return

    def stop_now(self, reason: str) -> None:
        """SIGTERM to the supervisor (once); it stops everything below it and exits, ending ansible-runner's read."""
        if self.reason is None:
            self.tracker.stopping = True
            self.reason = reason
        self._signal()

    def _signal(self) -> None:
        pid = self.supervision.pid
        if pid is None or self._signalled:  # not started yet: the loop signals it once it is
            return
        self._signalled = True
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """The execution returned; if it is stopping, wait until the supervisor itself is gone."""
        self._done.set()
        pid = self.supervision.pid
        if self.reason is not None and pid is not None:
            deadline = time.monotonic() + self.supervision.grace + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
