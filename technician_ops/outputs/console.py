"""Views of the event stream: a live terminal view and JSON lines for CI."""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, Any

from technician_ops.events import Event, Kind
from technician_ops.outputs.render import CONTROL as _CONTROL, OUTPUT_LINES

_HOST_MARK = {"ok": ("✔", "green"), "changed": ("✔", "yellow"), "failed": ("✖", "red"),
              "unreachable": ("✖", "red"), "skipped": ("·", "dim")}
_OUTCOME_STYLE = {"succeeded": "bold green", "failed": "bold red", "rolled_back": "bold yellow",
                  "rollback_failed": "bold white on red", "interrupted": "bold red", "skipped": "yellow",
                  "refused": "bold red", "awaiting_approval": "yellow"}


class JsonView:
    """One JSON object per event on stdout (``--output json``)."""

    def __init__(self, run_id: str | None = None, stream: IO[str] | None = None) -> None:
        self.run_id = run_id or ""  # learned from run_start when not given
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def handle(self, event: Event) -> None:
        if not self.run_id and event.kind is Kind.RUN_START:
            self.run_id = str(event.data.get("run_id") or "")
        line = json.dumps(event.to_json(self.run_id), default=str, sort_keys=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


Segments = tuple[tuple[str, str], ...]  # (text, style) pairs: one line, no markup


class _LineWriter:
    """Writes one-line messages straight to a rich console's file.

    ``Console.print`` parses markup, measures, wraps and builds segments for
    every call: ~90 µs per host line, which made the terminal view the whole
    cost of the event pipeline (issue 9).  Lines made of (text, style) pairs
    need none of that: the ANSI codes of each style are rendered once per
    colour system and cached.  A console that records, renders for Jupyter or
    for a legacy Windows terminal keeps going through ``Console.print``.
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self.direct = not (getattr(console, "record", False) or getattr(console, "is_jupyter", False)
                           or getattr(console, "legacy_windows", False)) and hasattr(console, "file")
        self.codes: dict[str, tuple[str, str]] = {}
        self.system: Any = None
        if self.direct:
            from rich.color import ColorSystem

            self.system = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT,
                           "truecolor": ColorSystem.TRUECOLOR}.get(console.color_system or "")

    def _wrap(self, style: str) -> tuple[str, str]:
        codes = self.codes.get(style)
        if codes is None:
            from rich.style import Style

            before, _, after = Style.parse(style).render("\x00", color_system=self.system).partition("\x00")
            codes = self.codes[style] = (before, after)
        return codes

    def render(self, segments: Segments) -> str:
        """The line as the terminal gets it: ANSI-styled when the console has colour, plain text otherwise."""
        if self.system is None:
            return "".join(text for text, _ in segments).translate(_CONTROL)
        parts = []
        for text, style in segments:
            text = text.translate(_CONTROL)
            if style and text:
                before, after = self._wrap(style)
                parts.append(before + text + after)
            else:
                parts.append(text)
        return "".join(parts)

    def write(self, segments: Segments) -> None:
        """Caller holds the view's lock."""
        if self.direct:
            file = self.console.file
            file.write(self.render(segments) + "\n")
            file.flush()
        else:
            from rich.text import Text

            self.console.print(Text.assemble(*segments), markup=False, emoji=False, highlight=False)


class TextView:
    """Human view: each step and host as it starts and finishes, then a summary."""

    def __init__(self, console: Any = None, *, verbose: bool = False) -> None:
        """``verbose``: every kept line of a step's output (default: the last ``OUTPUT_LINES``)."""
        self.verbose = verbose
        self.run_id = ""
        if console is None:
            from rich.console import Console

            console = Console(highlight=False)
        self.console = console
        self.lock = threading.Lock()
        self.rows: list[tuple[str, str, str, float, str]] = []  # phase, step, status, duration, hosts
        self.lines = _LineWriter(console)

    def print(self, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            self.console.print(*args, **kwargs)

    def line(self, *segments: tuple[str, str]) -> None:
        """One line of (text, style) pairs, printed verbatim: no markup, so nothing needs escaping."""
        with self.lock:
            self.lines.write(segments)

    def handle(self, event: Event) -> None:
        d = event.data
        k = event.kind
        if k is Kind.HOST_RESULT:  # the hot path: one per host per task
            mark, style = _HOST_MARK.get(d["status"], ("?", "white"))
            err = d.get("error")
            self.line(("    ", ""), (f"{mark} {d['host']}", style), (f" {d['status']} ", ""),
                      (f"{d['duration']:.1f}s", "dim"), (f": {err}" if err else "", ""),
                      (f" ({d['reason']})" if d.get("reason") else "", "dim"))
            if d.get("output"):
                self._output(d)
        elif k is Kind.TASK_START:
            self.line(("    ", ""), (f"… {d['task']}", "dim"))
        elif k is Kind.DIFF:
            self.line(("    ", ""), (f"diff on {d['host']}: {d['task']}", "dim"))
            for text in str(d["diff"]).splitlines():
                style = "green" if text.startswith("+") else "red" if text.startswith("-") else "dim" if text.startswith("@@") else ""
                self.line(("      ", ""), (text, style))
        elif k is Kind.RUN_START:
            self.run_id = str(d.get("run_id") or "")
            check = bool(d.get("check"))
            self.line((f"▶ {d['runbook']}", "bold"), (f" run {d['run_id']}" + (" " if check else ""), ""),
                      ("(check mode: nothing will change)" if check else "", "cyan"))
        elif k is Kind.STEP_START:
            prefix = "↺ undo " if d.get("phase") == "rollback" else "▸ "
            hosts = d.get("hosts")
            self.line((prefix, ""), (str(d["step"]), "bold"), (" ", ""), (f"({d.get('kind') or 'step'})", "dim"),
                      (" " if hosts else "", ""), (f"on {hosts}" if hosts else "", "dim"))
        elif k is Kind.STEP_END:
            host_status: dict[str, str] = d.get("hosts") or {}
            summary = ", ".join(f"{h}={s}" for h, s in host_status.items())
            self.rows.append((d.get("phase", "run"), d["step"], d["status"], d["duration"], summary))
        elif k is Kind.APPROVAL:
            word = "approved" if d.get("approved") else "NOT approved"
            self.line(("    approval of ", ""), (str(d["step"]), "bold"), (f": {word} ({d.get('by')})", ""))
        elif k is Kind.ROLLBACK_START:
            steps = ", ".join(d.get("steps") or []) or "nothing to undo"
            self.line(("↺ rolling back", "bold yellow"), (f" in reverse order: {steps}", ""))
        elif k is Kind.ROLLBACK_END:
            for f in d.get("failures") or []:
                self.line((f"  undo of {f['step']} failed on {f['host']}: {f.get('error')}", "red"))
        elif k is Kind.NOTICE:
            self.line((str(d["message"]), "yellow" if d.get("level") == "warning" else "cyan"))
        elif k is Kind.ARTIFACT:
            self.line(("    ", ""), (f"recorded {d.get('type')}: {d.get('summary', '')}", "dim"))
        elif k is Kind.RUN_END:
            self._summary(d)

    def _output(self, d: dict[str, Any]) -> None:
        """What the step printed on the host, under its result: the last lines (all with -v); stderr marked."""
        out = d["output"]
        failed = d["status"] in ("failed", "unreachable")
        lines = [("│ ", text, "") for text in str(out.get("stdout") or "").splitlines()]
        lines += [("! ", text, "red" if failed else "yellow") for text in str(out.get("stderr") or "").splitlines()]
        if out.get("msg") and not failed:  # a failure's msg is already in its error
            lines += [("│ ", text, "") for text in str(out["msg"]).splitlines()]
        shown = lines if self.verbose else lines[-OUTPUT_LINES:]
        if len(shown) < len(lines):
            self.line(("      ", ""), (f"… {len(lines) - len(shown)} earlier line(s): -v, or show {self.run_id or 'RUN_ID'} "
                                        f"--step {d['step']} --host {d['host']}", "dim"))
        for mark, text, style in shown:
            self.line(("      ", ""), (mark, "dim"), (text, style))
        if out.get("truncated"):
            self.line(("      ", ""), (f"[output cut to its first and last lines; {out.get('bytes')} bytes, sha256 "
                                        f"{str(out.get('sha256'))[:16]}…]", "dim"))

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
