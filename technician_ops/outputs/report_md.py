"""The Markdown rendering of a run report (``report --format md``): for a ticket, a chat, a terminal.

The runbook's own Markdown is copied as the author wrote it, with two changes that keep it from
reaching into the report around it: every ``<`` outside code becomes ``&lt;`` (raw HTML and
comments in the prose show as text and cannot swallow what follows), and a fence left open at the
end is closed.  Its headings move down two levels, under the report's own.  Every other value is
backslash-escaped on one line, or, when it has lines of its own (an error, a host's output),
fenced with more backticks than any run of them inside.
"""

from __future__ import annotations

import re
from typing import Any

from technician_ops.outputs.report import (TAIL_LINES, Block, Doc, HostView, Output, Report, StepView, as_text, parse_when,
                                           seconds, secret_versions)

_ESCAPE = re.compile(r"([\\`*_\[\]<>&|~#!$])")


def text(value: Any) -> str:
    """``value`` as one line of Markdown that renders as exactly its characters."""
    return _ESCAPE.sub(r"\\\1", as_text(value).replace("\n", " / "))


def fence(body: str, info: str = "text") -> str:
    """``body`` in a fenced block it cannot close: the fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{body}{'' if body.endswith(chr(10)) or not body else chr(10)}{ticks}\n"


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(r: Report) -> str:
    out: list[str] = []
    add = out.append
    add(f"# Run report: {text(r.title)}: {text(r.outcome.replace('_', ' ').upper())}\n")
    if r.source.state != "same" or r.source.note:
        loud = r.source.state in ("changed", "missing")
        add(f"> {'**WARNING:** ' if loud else ''}{text(r.source.note)}\n")
    add(_table(("", ""), r.facts))
    add("## Parameters\n")
    add(_table(("parameter", "value"), r.params) if r.params else "No parameters.\n")
    add("## Runbook, step by step\n" if r.doc is not None else "## Steps (from the record only)\n")
    if r.doc is not None:
        _body(r, r.doc, add)
    else:
        for step in r.steps:
            add(f"### {text(step.name)}\n")
            _step_result(step, add)
    if r.not_in_file:
        add("## Steps the runbook file no longer has\n")
        add("The record says these ran; the runbook file read for this report has no block for them.\n")
        for step in r.not_in_file:
            add(f"### {text(step.name)}\n")
            _step_result(step, add)
    _approvals(r, add)
    _rollback(r, add)
    _artifacts(r, add)
    if r.notices:
        add("## Notices\n")
        add("\n".join(f"- {text(n.get('level') or 'info')}: {text(n.get('message'))}" for n in r.notices) + "\n")
    add("## Audit chain\n")
    add(_table(("", ""), r.chain))
    add("Check the chain with `technician-ops audit verify`.\n")
    add(f"---\n*Report generated {text(r.generated_at)} by technician-ops {text(r.version)}.*\n")
    return "\n".join(out)


# -- the runbook, with each step's results after its block ---------------------------------------


def _body(r: Report, doc: Doc, add: Any) -> None:
    lines = list(doc.lines)
    tokens = doc.tokens
    for tok in tokens:  # headings under the report's: two levels down
        if tok.type == "heading_open" and tok.map and tok.markup.startswith("#"):
            i = tok.map[0]
            lines[i] = re.sub(r"^(\s{0,3})(#{1,6})", lambda m: m.group(1) + "#" * min(6, len(m.group(2)) + 2), lines[i], count=1)
    done: set[int] = set()
    for tok in tokens:  # raw HTML in the prose becomes text
        if tok.type == "inline" and tok.map and tok.map[0] not in done:
            start, end = tok.map
            done.update(range(start, end))
            lines[start:end] = _no_html("\n".join(lines[start:end])).split("\n")
    tops = [tok for tok in tokens if tok.level == 0 and tok.map and tok.nesting >= 0]
    after: dict[int, list[Block]] = {}
    for block in doc.blocks.values():
        if block.step is None and block.undo_of is None:
            continue
        end = next((t.map[1] for t in tops if t.map[0] <= block.line < t.map[1]), block.line + 1)
        after.setdefault(end, []).append(block)
    if doc.front_matter is not None:
        add("*Front matter:*\n")
        add(fence(doc.front_matter + "\n", "yaml"))
    cursor = doc.body_start
    for end in sorted(after):
        prose = _prose(lines[cursor:end], tokens, cursor)
        if prose:
            add(prose)
        for block in after[end]:
            _block_result(r, block, add)
        cursor = end
    rest = _prose(lines[cursor:], tokens, cursor)
    if rest:
        add(rest)


def _prose(lines: list[str], tokens: list[Any], first: int) -> str:
    """Lines of the runbook; a fence still open at their end is closed, so it cannot swallow the report."""
    text_ = "\n".join(lines).strip("\n")
    last = first + len(lines)
    for tok in tokens:
        if tok.type == "fence" and tok.level == 0 and tok.map and first <= tok.map[0] < last and not _closed(tok, lines, first):
            text_ += "\n" + tok.markup
    return text_ + "\n" if text_ else ""


def _closed(tok: Any, lines: list[str], first: int) -> bool:
    i = tok.map[1] - 1 - first
    if i <= tok.map[0] - first or i >= len(lines):
        return False
    closing = lines[i].strip()
    return closing.startswith(tok.markup) and set(closing) == {tok.markup[0]}


def _no_html(source: str) -> str:
    """``<`` outside code spans as ``&lt;``: no tag, comment or autolink survives, code reads as written."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "\\" and i + 1 < n:
            out.append(source[i:i + 2])
            i += 2
        elif ch == "`":
            run = len(source[i:]) - len(source[i:].lstrip("`"))
            close = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(source, i + run)
            stop = close.end() if close else i + run
            out.append(source[i:stop])
            i = stop
        elif ch == "<":
            out.append("&lt;")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _block_result(r: Report, block: Block, add: Any) -> None:
    if block.undo_of is not None:
        undo = r.undo_by_name.get(block.undo_of)
        if undo is None:
            add(f"*Undo of {text(block.undo_of)}: did not run.*\n")
        else:
            add(f"*Undo of {text(block.undo_of)}: ran during the rollback: {text(undo.status)}"
                f"{' in ' + seconds(undo.duration) if seconds(undo.duration) else ''} (see Rollback below).*\n")
        return
    step = r.by_name.get(block.step or "")
    if step is not None:
        _step_result(step, add)


def _step_result(step: StepView, add: Any) -> None:
    if not step.ran:
        add(f"**{text(step.name)} did not run.**\n")
        return
    where = f"{text(step.kind or 'step')}" + (f" on {text(step.targets)}" if step.targets else "")
    took = f" in {seconds(step.duration)}" if seconds(step.duration) else ""
    add(f"**{text(step.name)}: {text(step.status.upper())}**{took} ({where}; "
        f"{text(_clock(step.started_at))} to {text(_clock(step.ended_at))})\n")
    _hosts(step.hosts, add)


def _clock(value: Any) -> str:
    when = parse_when(value)
    return when.strftime("%H:%M:%S") if when else "-"


def _hosts(hosts: list[HostView], add: Any) -> None:
    if not hosts:
        add("No host reported a result.\n")
        return
    add(_table(("host", "status", "changed", "time"), [(h.name, h.status, h.changed, seconds(h.duration)) for h in hosts]))
    for h in hosts:
        if h.error:
            add(f"{text(h.name)} error:\n")
            add(fence(h.error))
        if h.output is not None:
            _output(h.name, h.output, add)


def _output(host: str, out: Output, add: Any) -> None:
    bits = [f"rc {as_text(out.rc)}" if out.rc is not None else "", f"{as_text(out.size)} bytes" if out.size is not None else "",
            "cut when recorded" if out.truncated else "", f"sha256 {out.sha256}" if out.sha256 else ""]
    add(f"{text(host)} output ({text(', '.join(b for b in bits if b))}):\n")
    if out.msg:
        add("msg:\n")
        add(fence(out.msg))
    for s in out.streams:
        shown = f"last {TAIL_LINES} of {s.lines} lines" if s.earlier else f"{s.lines} line{'s' if s.lines != 1 else ''}"
        add(f"{s.name} ({shown}):\n")
        add(fence(s.tail))


# -- after the runbook ---------------------------------------------------------------------------


def _approvals(r: Report, add: Any) -> None:
    add("## Approvals\n")
    if not r.approvals:
        add("No approvals were asked for.\n")
        return
    add(_table(("step", "approved", "by", "user", "at"),
               [(a.get("step"), "yes" if a.get("approved") else "no", a.get("by"), a.get("user"), _clock(a.get("at")))
                for a in r.approvals]))


def _rollback(r: Report, add: Any) -> None:
    add("## Rollback\n")
    rb = r.rollback
    if not rb:
        add("No rollback ran.\n")
        return
    planned = ", ".join(as_text(p) for p in rb.get("planned") or []) or "-"
    add(f"Outcome: **{text(rb.get('outcome') or 'unfinished')}**. Undo order (newest first): {text(planned)}. "
        f"{text(_clock(rb.get('started_at')))} to {text(_clock(rb.get('ended_at')))}.\n")
    for i, step in enumerate(r.undo_steps, 1):
        add(f"### {i}. undo {text(step.name)}\n")
        _step_result(step, add)
    failures = [f for f in rb.get("failures") or [] if isinstance(f, dict)]
    if failures:
        add("**Undo failures (a human is needed):**\n")
        for f in failures:
            add(f"- undo {text(f.get('step'))} on {text(f.get('host'))}:\n")
            add(fence(as_text(f.get("error"))))


def _artifacts(r: Report, add: Any) -> None:
    add("## Artifacts\n")
    a = r.artifacts
    if not (a["backup"] or a["secret_version"] or a["terraform_plan"] or r.other_artifacts):
        add("None.\n")
        return
    if a["backup"]:
        add("### Backups\n")
        add(_table(("step", "host", "source", "bytes", "sha256", "path"),
                   [(b.get("step"), b.get("host"), b.get("source"), b.get("size"), b.get("sha256"), b.get("path"))
                    for b in a["backup"]]))
    if a["secret_version"]:
        add("### Secret versions\n")
        add(_table(("step", "secret", "versions"),
                   [(s.get("step"), f"{as_text(s.get('path') or s.get('mount'))}#{as_text(s.get('key'))}", secret_versions(s))
                    for s in a["secret_version"]]))
    if a["terraform_plan"]:
        add("### Terraform plans\n")
        for p in a["terraform_plan"]:
            add(f"- {text(p.get('step'))}: {text(p.get('summary') or p.get('module'))}"
                + (f" (workspace {text(p.get('workspace'))})" if p.get("workspace") else "")
                + (" (destroy)" if p.get("destroy") else ""))
            for label in ("adds", "changes", "replaces", "destroys"):
                if p.get(label):
                    add(f"  - {label}: {text(', '.join(as_text(x) for x in p[label]))}")
            add("")
    if r.other_artifacts:
        add("### Other\n")
        add(_table(("type", "what"), r.other_artifacts))
