"""execute: one ansible-runner execution, its events folded into ours.

``StepTracker`` turns ansible-runner's per-task, per-host events into the
tool's per-step, per-host events.  Its work per event is O(1): it never
re-reads artifacts and keeps one small record per (step, host).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from technician_ops.events import Bus, HostStatus, Kind, StepStatus
from technician_ops.engine.redact import Redactor

_RANK = {HostStatus.SKIPPED: 0, HostStatus.OK: 1, HostStatus.CHANGED: 2, HostStatus.FAILED: 3, HostStatus.UNREACHABLE: 4}


@dataclass
class HostAgg:
    status: HostStatus = HostStatus.SKIPPED
    changed: bool = False
    duration: float = 0.0
    error: str | None = None
    ignored_errors: int = 0


@dataclass
class StepRun:
    name: str
    started: float = field(default_factory=time.monotonic)
    hosts: dict[str, HostAgg] = field(default_factory=dict)
    status: StepStatus = StepStatus.RUNNING
    duration: float = 0.0

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, a in self.hosts.items() if a.status in (HostStatus.FAILED, HostStatus.UNREACHABLE)]

    @property
    def changed(self) -> bool:
        return any(a.changed for a in self.hosts.values())


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
        self.steps: dict[str, StepRun] = {}
        self.order: list[str] = []
        self.current: StepRun | None = None
        self.finished_cleanly = False

    # ansible-runner calls this for every event; returning True keeps it on disk.
    def handle(self, event: dict[str, Any]) -> bool:
        etype = event.get("event", "")
        data = event.get("event_data") or {}
        if etype == "playbook_on_play_start":
            step = self.step_names.get(data.get("play") or data.get("name") or "")
            if step is not None:
                self._close()
                self.current = StepRun(step)
                self.steps[step] = self.current
                self.order.append(step)
                self.bus.emit(Kind.STEP_START, step=step, kind=self.kinds.get(step, ""), hosts=self.patterns.get(step, ""), phase=self.phase)
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
        host = data["host"]
        agg = self.current.hosts.get(host)
        if agg is None:
            agg = self.current.hosts[host] = HostAgg()
        if etype == "runner_on_start":
            return
        res = data.get("res") or {}
        status = {
            "runner_on_ok": HostStatus.CHANGED if res.get("changed") else HostStatus.OK,
            "runner_on_failed": HostStatus.FAILED,
            "runner_on_unreachable": HostStatus.UNREACHABLE,
            "runner_on_skipped": HostStatus.SKIPPED,
        }.get(etype)
        if status is None:
            return
        agg.duration += float(data.get("duration") or 0.0)
        if status in (HostStatus.FAILED, HostStatus.UNREACHABLE) and (data.get("ignore_errors") or res.get("skip_reason")):
            agg.ignored_errors += 1
            agg.error = agg.error or self._error(res, data)
            return
        if self.phase == "rollback" and status is HostStatus.FAILED:
            # rescued inside the undo block: still an undo failure
            pass
        if status is HostStatus.CHANGED:
            agg.changed = True
        if _RANK[status] > _RANK[agg.status]:
            agg.status = status
        if status in (HostStatus.FAILED, HostStatus.UNREACHABLE) and agg.error is None:
            agg.error = self._error(res, data)

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
        run.duration = time.monotonic() - run.started
        failed = bool(run.failed_hosts)
        run.status = StepStatus.FAILED if (failed or aborted) else StepStatus.SUCCEEDED
        if self.phase == "rollback" and any(a.ignored_errors for a in run.hosts.values()):
            run.status = StepStatus.FAILED
        for host, agg in run.hosts.items():
            self.bus.emit(Kind.HOST_RESULT, step=run.name, host=host, status=agg.status.value, changed=agg.changed,
                          duration=round(agg.duration, 3), error=agg.error, phase=self.phase)
        self.bus.emit(Kind.STEP_END, step=run.name, status=run.status.value, duration=round(run.duration, 3), phase=self.phase,
                      hosts={h: a.status.value for h, a in run.hosts.items()})

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
