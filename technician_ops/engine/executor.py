"""execute: one ansible-runner execution, its events folded into ours.

``StepTracker`` turns ansible-runner's per-task, per-host events into the
tool's per-step, per-host events.  Its work per event is O(1): it never
re-reads artifacts and keeps one small record per (step, host).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from technician_ops.engine.redact import Redactor
from technician_ops.events import Bus, Kind
from technician_ops.state import HostStatus, StepState

_STATUS = {
    "runner_on_ok": HostStatus.OK,
    "runner_on_failed": HostStatus.FAILED,
    "runner_on_unreachable": HostStatus.UNREACHABLE,
    "runner_on_skipped": HostStatus.SKIPPED,
}


class StepTracker:
    """Consumes ansible-runner events (``event_handler``) for one execution."""

    def __init__(self, bus: Bus, step_names: dict[str, str], phase: str, redactor: Redactor,
                 kinds_by_step: dict[str, str] | None = None, hosts_by_step: dict[str, str] | None = None) -> None:
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
        self.finished_cleanly = False

    # ansible-runner calls this for every event; returning True keeps it on disk.
    def handle(self, event: dict[str, Any]) -> bool:
        etype = event.get("event", "")
        data = event.get("event_data") or {}
        if etype == "playbook_on_play_start":
            step = self.step_names.get(data.get("play") or data.get("name") or "")
            if step is not None:
                self._close()
                self.current = StepState(step, self.kinds.get(step, ""), self.patterns.get(step, ""), self.phase,
                                         order=len(self.order))
                self._started = time.monotonic()
                self.steps[step] = self.current
                self.order.append(step)
                self.bus.emit(Kind.STEP_START, step=step, kind=self.kinds.get(step, ""), hosts=self.patterns.get(step, ""),
                              phase=self.phase)
        elif etype == "playbook_on_task_start" and self.current is not None:
            task = data.get("task") or ""
            if task and task != self.current.name and not task.startswith("undo failed"):
                self.bus.emit(Kind.TASK_START, step=self.current.name, task=self.redactor.text(task), phase=self.phase)
        elif etype.startswith("runner_on_") and self.current is not None and "host" in data:
            self._host_event(etype, data)
        elif etype == "playbook_on_stats":
            self.finished_cleanly = True
            self._close()
        return True

    def _host_event(self, etype: str, data: dict[str, Any]) -> None:
        assert self.current is not None
        agg = self.current.host(data["host"])
        status = _STATUS.get(etype)
        if status is None:  # runner_on_start and the like: the host is in the step, nothing more
            return
        res = data.get("res") or {}
        if status is HostStatus.OK and res.get("changed"):
            status = HostStatus.CHANGED
        broken = status in (HostStatus.FAILED, HostStatus.UNREACHABLE)
        agg.merge(status,
                  duration=float(data.get("duration") or 0.0), error=self._error(res, data) if broken else None,
                  ignored=broken and bool(data.get("ignore_errors") or res.get("skip_reason")))


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
        run.duration = time.monotonic() - self._started
        run.close(aborted=aborted)
        for host, agg in run.hosts.items():
            self.bus.emit(Kind.HOST_RESULT, step=run.name, host=host, status=agg.status.value, changed=agg.changed,
                          duration=round(agg.duration or 0.0, 3), error=agg.error, phase=self.phase)
        self.bus.emit(Kind.STEP_END, step=run.name, status=run.status.value, duration=round(run.duration, 3),
                      phase=self.phase, hosts={h: a.status.value for h, a in run.hosts.items()})

    def finish(self, rc: int) -> None:
        """After the execution returned: close a step the run died inside."""
        self._close(aborted=rc != 0)


@dataclass
class ExecutionResult:
    rc: int
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    artifact_dir: Path


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
) -> ExecutionResult:
    import ansible_runner

    from technician_ops.engine.runner_pty import spawn_without_close_delay

    spawn_without_close_delay()
    cmdline = ["--check"] if check else []
    bindir = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        "ANSIBLE_CONFIG": str(private_data_dir / "ansible.cfg"),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "ANSIBLE_NOCOLOR": "1",
        **envvars,
    }
    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        playbook=str(playbook),
        ident=ident,
        cmdline=" ".join(_quote(c) for c in cmdline) or None,
        inventory=[str(i) for i in inventory],
        envvars=env,
        event_handler=tracker.handle,
        cancel_callback=cancel,
        quiet=True,
        timeout=timeout,
        suppress_env_files=True,
        json_mode=False,
        # Not ansible-runner's per-run jsonfile cache (artifacts/<ident>/fact_cache,
        # forced through the environment): the run's ansible.cfg decides, so
        # facts are cached across runs under the state dir (compiler.ansible_cfg).
        fact_cache_type="none",
    )
    rc = runner.rc if isinstance(runner.rc, int) else 1
    tracker.finish(rc)
    return ExecutionResult(rc, str(runner.status), Path(runner.config.artifact_dir))


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def python() -> str:
    return sys.executable
