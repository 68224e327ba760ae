"""A blameless post-mortem draft in Markdown, from the audit records of one or more runs.

Two kinds of text are in the draft, and only two:

- facts: templates filled with the records' values (times, names, statuses, outcomes, errors, what
  a host printed).  No sentence says more than its values do: no adjective, no cause, no
  "resolved" unless the latest run succeeded, and then only as the timeline's phase name.
- ``TO FILL``: the headings and placeholders a person completes (summary in words, customer
  impact, root cause with a five-whys ladder, what went well or badly, action items).

Every value is data, never Markdown: inline values go through ``md`` (every character that could
open Markdown syntax backslash-escaped, line breaks and control characters made visible), so a host or step
named ``x #`` or ``[a](http://b)`` cannot add a heading, a link or HTML; what hosts printed goes
in code fences longer than any backtick run inside it (``fence``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

TO_FILL = "TO FILL"
OUTPUT_LINES = 40  # of each stream of a failed host's output, the last lines shown
OUTPUT_CHARS = 4000  # ... and at most this many characters of them
ERROR_CHARS = 200  # an error in the timeline: its first line, cut here
BROKEN = ("failed", "unreachable", "unknown")  # host statuses that are a failure there
WHYS = 5
# The timeline's phases, as its legend explains them (only the ones a draft uses are listed).
PHASES = {
    "detect": "what started a run (its origin)",
    "act": "the run and its steps",
    "rollback": "undo steps",
    "end": "a run's end",
    "resolve": "the end of the latest run, which succeeded",
}

# The characters that can start Markdown (or GitHub's extensions) inside a line: escapes, code, emphasis,
# strikethrough, links and images, HTML and entities, table cells, a heading's closing #s, math.  Values
# never begin a line here (every line starts with fixed text), so line-start syntax (- + > 1. ===) needs
# nothing; CommonMark lets any ASCII punctuation be backslash-escaped, these are the ones that must be.
_SPECIAL = frozenset("\\`*_[]<>&|~#$!")
_NEWLINE = "\u21b5"  # ↵: a line break inside a value, shown, not obeyed
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068"
                       "\u2069\ufeff")  # zero-width and bidirectional controls: they could hide or reorder text


def md(value: Any, limit: int | None = None) -> str:
    """``value`` as literal Markdown text, safe in a paragraph, a heading, a list or a table cell."""
    text = _plain(value)
    cut = 0
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit]
    out = []
    for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
        if ch == "\n":
            out.append(f" {_NEWLINE} ")
        elif ch == "\t":
            out.append(" ")
        elif ch in _SPECIAL:
            out.append("\\" + ch)
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or ch in _INVISIBLE:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out) + (f" \\[{cut} more characters\\]" if cut else "")


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def fence(text: str) -> str:
    """``text`` in a backtick code fence longer than any backtick run inside it (so nothing in it can
    close the fence); control characters other than line breaks and tabs are replaced."""
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    body = "".join("\ufffd" if (ord(ch) < 32 and ch not in "\n\t") or 0x7F <= ord(ch) < 0xA0 or ch in _INVISIBLE
                   else ch for ch in body)
    longest = run = 0
    for ch in body:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    if not body.endswith("\n"):
        body += "\n"
    return f"{ticks}\n{body}{ticks}"


def when(value: Any) -> dt.datetime | None:
    """A record's time (ISO text, Z or offset) as an aware UTC datetime; None if absent or unreadable."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def utc(value: dt.datetime | None) -> str:
    """The form every time takes in the draft: seconds, UTC, truncated (never rounded up)."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "-"


def seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


@dataclass(order=True)
class Entry:
    """One timeline row; sorted by time, then by run, then by the order it was read."""

    at: dt.datetime
    run: int
    n: int
    label: str = field(compare=False)
    phase: str = field(compare=False)
    text: str = field(compare=False)


def _steps(container: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    items = [(str(name), step) for name, step in (container or {}).items() if isinstance(step, dict)]
    return sorted(items, key=lambda item: (item[1].get("order") or 0, item[0]))


def _hosts(step: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(((str(h), a if isinstance(a, dict) else {}) for h, a in (step.get("hosts") or {}).items()))


def _first_line(value: Any) -> str:
    text = _plain(value).strip()
    return text.splitlines()[0] if text else ""


class Draft:
    """The records, oldest run first, and the Markdown built from them."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        far = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        self.records = sorted(records, key=lambda r: (when(r.get("started_at")) or far, str(r.get("run_id"))))
        self.labels = {id(r): f"R{i}" for i, r in enumerate(self.records, 1)}
        self.lines: list[str] = []

    def label(self, record: dict[str, Any]) -> str:
        return self.labels[id(record)]

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def markdown(self) -> str:
        self.lines = []
        self.header()
        self.summary()
        self.impact()
        self.timeline()
        self.what_was_done()
        self.to_fill()
        self.sources()
        return "\n".join(self.lines).rstrip() + "\n"

    # -- sections -----------------------------------------------------------------------------

    def header(self) -> None:
        runbooks = list(dict.fromkeys(str(r.get("runbook")) for r in self.records))
        first = when(self.records[0].get("started_at"))
        self.add(f"# Post-mortem draft: {', '.join(md(rb) for rb in runbooks)}"
                 + (f", {first.strftime('%Y-%m-%d')}" if first else ""), "",
                 f"> Drafted by technician-ops from the audit records of {len(self.records)} run(s). Everything "
                 f"outside the sections marked **{TO_FILL}** is filled in from those records; the {TO_FILL} parts "
                 "are for the people involved. Keep it blameless: ask what in the system or the process "
                 "allowed each step, not who.", "")

    def summary(self) -> None:
        last = self.records[-1]
        self.add("## Summary", "", f"_{TO_FILL}: what happened, in a few plain sentences._", "", "From the records:", "")
        counts: dict[str, int] = {}
        for r in self.records:
            counts[str(r.get("runbook"))] = counts.get(str(r.get("runbook")), 0) + 1
        self.add("- Runbooks: " + ", ".join(f"{md(rb)} ({n} run(s))" for rb, n in counts.items()) + ".")
        starts = [t for t in (when(r.get("started_at")) for r in self.records) if t]
        ends = [t for t in (when(r.get("ended_at")) for r in self.records) if t]
        if starts:
            self.add(f"- First run started {utc(min(starts))}" + (f"; last run ended {utc(max(ends))}." if ends else "."))
        self.add(f"- Latest run ({self.label(last)}): outcome {md(last.get('outcome'))}{_exit(last)}"
                 + (", a --check dry run" if last.get("check") else "") + ".", "")
        self.add("| run | run id | runbook | started (UTC) | ended (UTC) | duration | outcome | exit code | operator "
                 "| origin | mode |", "|---|---|---|---|---|---|---|---|---|---|---|")
        for r in self.records:
            op = r.get("operator") or {}
            origin = r.get("origin") or {}
            mode = "--check" if r.get("check") else "real"
            if r.get("action"):
                mode += f", {md(r.get('action'))} of {md(r.get('rollback_of'))}"
            self.add(f"| {self.label(r)} | {md(r.get('run_id'))} | {md(r.get('runbook'))} | "
                     f"{utc(when(r.get('started_at')))} | {utc(when(r.get('ended_at')))} | {seconds(r.get('duration'))} "
                     f"| {md(r.get('outcome'))} | {md(r.get('exit_code'))} | {md(op.get('user'))}@{md(op.get('host'))} "
                     f"| {md(origin.get('type'))} | {mode} |")
        self.add("")

    def impact(self) -> None:
        self.add("## Impact", "", f"_{TO_FILL}: who or what was affected (users, services, data), how, and for how "
                 "long._", "", "From the records:", "")
        starts = [t for t in (when(r.get("started_at")) for r in self.records) if t]
        ends = [t for t in (when(r.get("ended_at")) for r in self.records) if t]
        if starts and ends:
            self.add(f"- From the first run's start to the last run's end: {seconds((max(ends) - min(starts)).total_seconds())} "
                     f"({utc(min(starts))} to {utc(max(ends))}).")
        total = sum(r["duration"] for r in self.records if isinstance(r.get("duration"), (int, float)))
        self.add(f"- Sum of the runs' durations: {seconds(total)}.")
        hosts = self._host_table()
        self.add(f"- Hosts the runs' steps reached: {len(hosts)}" + (": " + ", ".join(md(h) for h in hosts) if hosts else "")
                 + ".", "")
        if not hosts:
            return
        self.add("| host | run | steps (status) | undo steps (status) |", "|---|---|---|---|")
        for host, rows in hosts.items():
            for label, steps, undos in rows:
                self.add(f"| {md(host)} | {label} | {steps or '-'} | {undos or '-'} |")
        self.add("")

    def _host_table(self) -> dict[str, list[tuple[str, str, str]]]:
        """host -> [(run label, its steps there, its undo steps there)], hosts in name order."""
        table: dict[str, list[tuple[str, str, str]]] = {}
        for r in self.records:
            per_host: dict[str, tuple[list[str], list[str]]] = {}
            for name, step in _steps(r.get("steps")):
                for host, a in _hosts(step):
                    per_host.setdefault(host, ([], []))[0].append(f"{md(name)} ({_state(a)})")
            for name, step in _steps((r.get("rollback") or {}).get("steps")):
                for host, a in _hosts(step):
                    per_host.setdefault(host, ([], []))[1].append(f"{md(name)} ({_state(a)})")
            for host, (steps, undos) in per_host.items():
                table.setdefault(host, []).append((self.label(r), ", ".join(steps), ", ".join(undos)))
        return dict(sorted(table.items()))

    def timeline(self) -> None:
        entries: list[Entry] = []
        latest = self.records[-1]
        for index, r in enumerate(self.records):
            entries.extend(self._entries(r, index, resolves=r is latest and r.get("outcome") == "succeeded"
                                         and not r.get("check")))
        used = {e.phase for e in entries}
        legend = "; ".join(f"{phase}: {meaning}" for phase, meaning in PHASES.items() if phase in used)
        self.add("## Timeline (UTC)", "", f"From the records. Phases: {legend}. "
                 f"_{TO_FILL}: add what happened outside these runs (alerts, messages, decisions)._", "",
                 "| time (UTC) | run | phase | what the record says |", "|---|---|---|---|")
        for e in sorted(entries):
            self.add(f"| {utc(e.at)} | {e.label} | {e.phase} | {e.text} |")
        self.add("")

    def _entries(self, r: dict[str, Any], index: int, *, resolves: bool) -> list[Entry]:
        label = self.label(r)
        out: list[Entry] = []

        def add(at: Any, phase: str, text: str) -> None:
            moment = when(at)
            if moment is None:
                return
            out.append(Entry(moment, index, len(out), label, phase, text))

        origin = r.get("origin") or {}
        if origin.get("type"):
            extra = [f"{md(k)} {md(v)}" for k, v in sorted(origin.items()) if k != "type" and v not in (None, "", [], {})]
            add(r.get("started_at"), "detect", f"origin type {md(origin.get('type'))}" + (f" ({', '.join(extra)})" if extra else ""))
        op = r.get("operator") or {}
        add(r.get("started_at"), "act", f"run {md(r.get('run_id'))} of {md(r.get('runbook'))} started by "
            f"{md(op.get('user'))}@{md(op.get('host'))}" + (" in --check mode" if r.get("check") else ""))
        for a in r.get("approvals") or []:
            verdict = "approved" if a.get("approved") else "not approved"
            add(a.get("at"), "act", f"step {md(a.get('step'))} {verdict} by {md(a.get('by'))} (user {md(a.get('user'))})")
        self._step_entries(add, r.get("steps"), "act")
        rollback = r.get("rollback") or {}
        if rollback:
            add(rollback.get("started_at"), "rollback", "rollback started, undo order: "
                + (", ".join(md(s) for s in rollback.get("planned") or []) or "-"))
            self._step_entries(add, rollback.get("steps"), "rollback")
            failures = rollback.get("failures") or []
            add(rollback.get("ended_at"), "rollback", f"rollback ended: outcome {md(rollback.get('outcome'))}, "
                f"{len(failures)} failed undo(s)" + "".join(f"; {md(f.get('step'))} on {md(f.get('host'))}: "
                                                           f"{md(_first_line(f.get('error')), ERROR_CHARS)}" for f in failures))
        for note in r.get("notices") or []:
            if isinstance(note, dict):
                add(note.get("at"), "act", f"notice ({md(note.get('level'))}): {md(_first_line(note.get('message')), ERROR_CHARS)}")
        end = f"run {md(r.get('run_id'))} ended: outcome {md(r.get('outcome'))}{_exit(r)}"
        if r.get("failed_step"):
            end += f", failed step {md(r.get('failed_step'))}"
            if r.get("failed_hosts"):
                end += " on " + ", ".join(md(h) for h in r["failed_hosts"])
        if r.get("reason"):
            end += f"; reason: {md(_first_line(r.get('reason')), ERROR_CHARS)}"
        add(r.get("ended_at"), "resolve" if resolves else "end", end)
        return out

    def _step_entries(self, add: Any, steps: dict[str, Any] | None, phase: str) -> None:
        undo = "undo of " if phase == "rollback" else ""
        for name, step in _steps(steps):
            add(step.get("started_at"), phase, f"{undo}step {md(name)} ({md(step.get('kind'))}) started on "
                f"{md(step.get('targets'))}")
            hosts = _hosts(step)
            add(step.get("ended_at"), phase, f"{undo}step {md(name)} ended: {md(step.get('status'))}"
                + (" — " + ", ".join(f"{md(h)} {md(a.get('status'))}" for h, a in hosts) if hosts else ""))
            for host, a in hosts:
                if a.get("status") in BROKEN:
                    add(step.get("ended_at"), phase, f"{undo}step {md(name)} {md(a.get('status'))} on {md(host)}"
                        + (f": {md(_first_line(a.get('error')), ERROR_CHARS)}" if a.get("error") else ""))

    def what_was_done(self) -> None:
        self.add("## What was done", "", "From the records, run by run.", "")
        for r in self.records:
            self.add(f"### {self.label(r)}: {md(r.get('runbook'))}, outcome {md(r.get('outcome'))}", "")
            self.add(f"- Run id: {md(r.get('run_id'))}")
            params = r.get("params") or {}
            self.add("- Parameters: " + (", ".join(f"{md(k)}={md(v)}" for k, v in sorted(params.items())) or "none"))
            source = f"- Runbook file: {md(r.get('path'))}, sha256 {md(r.get('runbook_sha256'))}"
            git = r.get("git") or {}
            if git.get("commit"):
                source += f", git commit {md(git.get('commit'))}" + (" (uncommitted changes)" if git.get("dirty") else "")
            self.add(source)
            if r.get("reason"):
                self.add(f"- Reason recorded: {md(r.get('reason'))}")
            self.add("")
            self._step_table(r.get("steps"), "Steps")
            rollback = r.get("rollback") or {}
            if rollback:
                self.add(f"Rollback: outcome {md(rollback.get('outcome'))}, undo order "
                         + (", ".join(md(s) for s in rollback.get("planned") or []) or "-") + ".", "")
                self._step_table(rollback.get("steps"), "Undo steps")
            self._artifacts(r)
            self._outputs(r)

    def _step_table(self, steps: dict[str, Any] | None, title: str) -> None:
        items = _steps(steps)
        if not items:
            self.add(f"{title}: none recorded.", "")
            return
        self.add(f"{title}:", "", "| step | kind | targets | status | duration | hosts |", "|---|---|---|---|---|---|")
        for name, step in items:
            hosts = ", ".join(f"{md(h)} {_state(a)}" for h, a in _hosts(step))
            self.add(f"| {md(name)} | {md(step.get('kind'))} | {md(step.get('targets'))} | {md(step.get('status'))} | "
                     f"{seconds(step.get('duration'))} | {hosts or '-'} |")
        self.add("")

    def _artifacts(self, r: dict[str, Any]) -> None:
        items = [(kind, item) for kind, values in sorted((r.get("artifacts") or {}).items()) for item in values or []
                 if isinstance(item, dict)]
        if not items:
            return
        self.add("Artifacts recorded:", "")
        for kind, item in items:
            fields = ", ".join(f"{md(k)} {md(v, ERROR_CHARS)}" for k, v in sorted(item.items()) if k != "at")
            self.add(f"- {utc(when(item.get('at')))} {md(kind)}: {fields}")
        self.add("")

    def _outputs(self, r: dict[str, Any]) -> None:
        """The errors and output of every failed host of every failed step, identical ones grouped."""
        groups: list[tuple[str, str, dict[str, Any], list[str]]] = []  # (phase, step, host result, hosts)
        for phase, steps in (("step", r.get("steps")), ("undo", (r.get("rollback") or {}).get("steps"))):
            for name, step in _steps(steps):
                for host, a in _hosts(step):
                    if a.get("status") not in BROKEN:
                        continue
                    for group in groups:
                        if group[:2] == (phase, name) and _same(group[2], a):
                            group[3].append(host)
                            break
                    else:
                        groups.append((phase, name, a, [host]))
        if not groups:
            self.add("No host failed a step in this run.", "")
            return
        self.add("Errors and output of the failed hosts:", "")
        for phase, name, a, hosts in groups:
            self.add(f"**{phase} {md(name)}**, {md(a.get('status'))} on {', '.join(md(h) for h in hosts)}:", "")
            if a.get("error"):
                self.add("Error:", "", fence(_plain(a.get("error"))), "")
            recorded = a.get("output")
            out: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
            if out.get("rc") is not None:
                self.add(f"Return code: {md(out.get('rc'))}.", "")
            if out.get("msg") and _plain(out.get("msg")) != _plain(a.get("error")):
                self.add("Message:", "", fence(_plain(out.get("msg"))), "")
            for stream in ("stdout", "stderr"):
                text = out.get(stream)
                if not text:
                    continue
                shown, note = _tail(str(text))
                self.add(f"{stream}{note}:", "", fence(shown), "")
            if out.get("bytes") is not None:
                self.add(f"Output recorded: {md(out.get('bytes'))} bytes, sha256 {md(out.get('sha256'))}"
                         + (", cut in the record (its start and end kept)" if out.get("truncated") else "") + ".", "")

    def to_fill(self) -> None:
        first = self._first_failure()
        self.add(f"## Root cause — {TO_FILL}", "",
                 "Five whys: start from what the records show and ask why until the answer is something in the "
                 "system or the process that can be changed.", "")
        self.add(f"1. {first} — _{TO_FILL}_")
        for i in range(2, WHYS + 1):
            self.add(f"{i}. Why? — _{TO_FILL}_")
        self.add("", f"Root cause: _{TO_FILL}_", "", f"Contributing factors: _{TO_FILL}_", "")
        self.add(f"## What went well — {TO_FILL}", "", f"- _{TO_FILL}_", "")
        self.add(f"## What went badly — {TO_FILL}", "", f"- _{TO_FILL}_", "")
        self.add(f"## Where we were lucky — {TO_FILL}", "", f"- _{TO_FILL}_", "")
        self.add(f"## Action items — {TO_FILL}", "", "| action | kind (prevent / detect / mitigate) | owner | ticket | due |",
                 "|---|---|---|---|---|", f"| _{TO_FILL}_ |  |  |  |  |", "")

    def _first_failure(self) -> str:
        for r in self.records:
            for name, step in _steps(r.get("steps")):
                failed = [h for h, a in _hosts(step) if a.get("status") in BROKEN]
                if failed:
                    return (f"Why did step {md(name)} end {md(step.get('status'))} on {', '.join(md(h) for h in failed)} "
                            f"in {self.label(r)}?")
            if r.get("outcome") not in ("succeeded", "running"):
                return f"Why did {self.label(r)} end {md(r.get('outcome'))}?"
        return f"Why were {', '.join(self.label(r) for r in self.records)} run?"

    def sources(self) -> None:
        self.add("## Sources", "", "The audit records this draft was made from (`technician-ops show RUN_ID` prints "
                 "one; `technician-ops audit verify` checks the chain they are part of):", "")
        for r in self.records:
            seq = r.get("seq")
            self.add(f"- {self.label(r)}: run {md(r.get('run_id'))}, "
                     + (f"record seq {md(seq)}, hash {md(r.get('hash'))}" if seq is not None
                        else "not sealed yet (outcome running when read)"))


def _state(host: dict[str, Any]) -> str:
    """A host's status in a step, and whether it changed something when the status alone does not say."""
    status = host.get("status")
    return md(status) + (" (changed)" if host.get("changed") and status != "changed" else "")


def _exit(record: dict[str, Any]) -> str:
    return f", exit code {md(record['exit_code'])}" if record.get("exit_code") is not None else ""


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("status"), a.get("error"), a.get("output")) == (b.get("status"), b.get("error"), b.get("output"))


def _tail(text: str) -> tuple[str, str]:
    """The last lines of ``text`` that fit, and a note saying how much of it that is."""
    lines = text.rstrip("\n").split("\n")
    kept = lines[-OUTPUT_LINES:]
    shown = "\n".join(kept)
    if len(shown) > OUTPUT_CHARS:
        shown = shown[-OUTPUT_CHARS:]
        return shown, f" (its last {len(shown)} of {len(text)} characters)"
    if len(kept) < len(lines):
        return shown, f" (its last {len(kept)} of {len(lines)} lines)"
    return shown, ""


def draft(records: list[dict[str, Any]]) -> str:
    """The post-mortem draft of ``records`` (audit records as ``AuditStore.get`` returns them), in any order."""
    if not records:
        raise ValueError("a post-mortem needs at least one record")
    return Draft(records).markdown()
