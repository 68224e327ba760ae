"""Views of the event stream: a live terminal view and JSON lines for CI."""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, Any

from .events import Event, Kind

_HOST_MARK = {"ok": ("✔", "green"), "changed": ("✔", "yellow"), "failed": ("✖", "red"),
              "unreachable": ("✖", "red"), "skipped": ("·", "dim")}
_OUTCOME_STYLE = {"succeeded": "bold green", "failed": "bold red", "rolled_back": "bold yellow",
                  "rollback_failed": "bold white on red", "interrupted": "bold red", "skipped": "yellow",
                  "refused": "bold red"}


class JsonView:
    """One JSON object per event on stdout (``--output json``)."""

    def __init__(self, run_id: str, stream: IO[str] | None = None) -> None:
        self.run_id = run_id
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def handle(self, event: Event) -> None:
        line = json.dumps(event.to_json(self.run_id), default=str, sort_keys=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class TextView:
    """Human view: each step and host as it starts and finishes, then a summary."""

    def __init__(self, console: Any = None) -> None:
        if console is None:
            from rich.console import Console

            console = Console(highlight=False)
        self.console = console
        self.lock = threading.Lock()
        self.rows: list[tuple[str, str, str, float, str]] = []  # phase, step, status, duration, hosts

    def print(self, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            self.console.print(*args, **kwargs)

    def handle(self, event: Event) -> None:
        d = event.data
        k = event.kind
        from rich.markup import escape

        if k is Kind.RUN_START:
            mode = " [cyan](check mode: nothing will change)[/]" if d.get("check") else ""
            self.print(f"[bold]▶ {escape(d['runbook'])}[/] run {d['run_id']}{mode}")
        elif k is Kind.STEP_START:
            prefix = "↺ undo " if d.get("phase") == "rollback" else "▸ "
            hosts = f" [dim]on {escape(str(d.get('hosts')))}[/]" if d.get("hosts") else ""
            self.print(f"{prefix}[bold]{escape(d['step'])}[/] [dim]({d.get('kind') or 'step'})[/]{hosts}")
        elif k is Kind.TASK_START:
            self.print(f"    [dim]… {escape(d['task'])}[/]")
        elif k is Kind.HOST_RESULT:
            mark, style = _HOST_MARK.get(d["status"], ("?", "white"))
            err = f": {escape(d['error'])}" if d.get("error") else ""
            self.print(f"    [{style}]{mark} {escape(d['host'])}[/] {d['status']} [dim]{d['duration']:.1f}s[/]{err}")
        elif k is Kind.STEP_END:
            host_status: dict[str, str] = d.get("hosts") or {}
            summary = ", ".join(f"{h}={s}" for h, s in host_status.items())
            self.rows.append((d.get("phase", "run"), d["step"], d["status"], d["duration"], summary))
        elif k is Kind.APPROVAL:
            word = "approved" if d.get("approved") else "NOT approved"
            self.print(f"    approval of [bold]{escape(d['step'])}[/]: {word} ({d.get('by')})")
        elif k is Kind.ROLLBACK_START:
            steps = ", ".join(d.get("steps") or []) or "nothing to undo"
            self.print(f"[bold yellow]↺ rolling back[/] in reverse order: {escape(steps)}")
        elif k is Kind.ROLLBACK_END:
            for f in d.get("failures") or []:
                self.print(f"[red]  undo of {escape(f['step'])} failed on {escape(f['host'])}: {escape(str(f.get('error')))}[/]")
        elif k is Kind.NOTICE:
            style = "yellow" if d.get("level") == "warning" else "cyan"
            self.print(f"[{style}]{escape(d['message'])}[/]")
        elif k is Kind.ARTIFACT:
            self.print(f"    [dim]recorded {escape(str(d.get('type')))}: {escape(str(d.get('summary', '')))}[/]")
        elif k is Kind.RUN_END:
            self._summary(d)

    def _summary(self, d: dict[str, Any]) -> None:
        from rich.markup import escape
        from rich.table import Table

        if self.rows:
            table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
            for col in ("phase", "step", "status", "time", "hosts"):
                table.add_column(col)
            for phase, step, status, duration, hosts in self.rows:
                color = {"succeeded": "green", "failed": "red"}.get(status, "white")
                table.add_row(phase, escape(step), f"[{color}]{status}[/]", f"{duration:.1f}s", escape(hosts))
            self.print(table)
        outcome = d["outcome"]
        extra = f" at step {d['failed_step']}" if d.get("failed_step") else ""
        self.print(f"[{_OUTCOME_STYLE.get(outcome, 'bold')}]{outcome.upper()}[/]{escape(extra)} "
                   f"in {d.get('duration', 0):.1f}s (exit {d.get('exit_code')}) run {d.get('run_id', '')}")
