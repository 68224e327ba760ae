"""The executed-runbook report: the runbook's own text, each step followed by what it did on each host.

``technician-ops report RUN_ID`` reads the run's audit record and the runbook file at the record's
``path`` and interleaves them: prose and blocks in the runbook's order, each step's block followed
by its status, duration, error and output on every host; then the rollback in the order it ran,
the approvals, the artifacts, the parameters and the record's place in the hash chain.  Markdown
for a ticket or a chat; one self-contained HTML file (inline CSS and SVG, no script, no request)
for a browser or a phone.

Everything shown came from a runbook, an operator, an alert or a host, and is data.  Strings are
cleaned first (lone surrogates, ANSI sequences and control characters become visible text); the
HTML is built by jinja2 with autoescape on and the runbook's prose by markdown-it-py with raw HTML
off; in Markdown, values are backslash-escaped, raw HTML in the prose is neutralised and multi-line
text sits in a fence longer than any backtick run inside it.  jinja2 and markdown-it-py are
imported on first use: ``--help`` never pays for them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from technician_ops.fsutil import read_regular
from technician_ops.plan.loader import MAX_RUNBOOK_BYTES

FORMATS = ("md", "html")
TAIL_LINES = 20  # of a host's output shown inline; the HTML has the rest one click away
STATUSES = frozenset({"ok", "changed", "failed", "unreachable", "skipped", "unknown", "succeeded", "running",
                      "pending", "not-run"})
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# -- cleaning: what may reach either rendering ---------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean(text: str) -> str:
    """Text a reader can trust: colours dropped, other control and bidi characters shown as escapes.

    A lone surrogate (a JSON ``\\ud800``: not encodable) becomes U+FFFD; ``\\r\\n`` and ``\\r``
    become newlines; tabs and newlines stay.
    """
    text = _SURROGATE.sub("\ufffd", text)
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        text)


def cleaned(value: Any) -> Any:
    """``value`` with every string in it (keys too) cleaned."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): cleaned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [cleaned(v) for v in value]
    return value


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_text(value: Any) -> str:
    """A scalar as a person reads it: ``true``, ``42``, ``r1``; anything nested as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return str(value)


def parse_when(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _stamp(value: Any) -> str:
    when = parse_when(value)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if when else as_text(value) or "-"


def seconds(value: Any) -> str:
    """``8.0 s``, ``2 min 05 s``; blank when unknown."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(round(value)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _status(value: Any) -> str:
    """A status as a CSS class can carry it: a known word, else ``other``."""
    text = str(value or "").replace("_", "-")
    return text if text in STATUSES else "other"


# -- the runbook file ----------------------------------------------------------------------------


@dataclass
class Source:
    """Where the runbook's text came from, and whether it is the text that ran."""

    path: str
    text: str | None = None  # None: the report is built from the record only
    state: str = "same"  # same, changed, missing, unknown (the record has no sha256)
    sha256: str | None = None
    note: str = ""


def read_runbook(record: dict[str, Any], project_root: Path | None = None) -> Source:
    """The runbook at the record's ``path``; when that is gone, the project's runbook of the same name.

    A text whose sha256 differs from the record's is still used, and said so: the record is what
    ran, the file is what the author wrote, and the report shows both.
    """
    recorded = str(record.get("path") or "")
    expected = record.get("runbook_sha256")
    candidates = [Path(recorded)] if recorded else []
    name = str(record.get("runbook") or "")
    if project_root is not None and _SLUG.match(name):
        candidates.append(Path(project_root) / "runbooks" / f"{name}.md")
    problems = []
    for path in candidates:
        try:
            data = read_regular(path, MAX_RUNBOOK_BYTES)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        moved = "" if str(path) == recorded else f" (the recorded path {recorded or '(none)'} is gone; this is {path})"
        if not expected:
            return Source(str(path), text, "unknown", digest, "the record has no sha256 of the runbook: "
                          "this file may not be the text that ran" + moved)
        if digest != expected:
            return Source(str(path), text, "changed", digest,
                          f"the runbook file changed since this run: it ran with sha256 {expected}, "
                          f"the file now has sha256 {digest}. The text below is the file as it is now; "
                          "the results are what the record says ran" + moved)
        return Source(str(path), text, "same", digest, moved.strip(" ()"))
    return Source(recorded, None, "missing", None, "the runbook file cannot be read ("
                  + ("; ".join(problems) or "the record names none") + "): this report is built from the record only")


@dataclass
class Block:
    """A fenced block of the runbook: a step, a step's ``{rollback=...}`` block, or documentation."""

    line: int  # 0-based line of the opening fence
    info: str
    content: str
    step: str | None = None
    undo_of: str | None = None


@dataclass
class Doc:
    """The runbook text split the way the loader splits it, parsed by markdown-it-py (raw HTML off)."""

    lines: list[str]  # the text's lines; the front matter's are blank
    front_matter: str | None
    body_start: int  # first line after the front matter
    blocks: dict[int, Block]  # opening line -> block
    tokens: list[Any]


def parse_runbook(text: str) -> Doc:
    from technician_ops.runbook.attrs import AttrError, parse_attrs, split_info
    from technician_ops.runbook.fences import fences

    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    lines = text.split("\n")
    front, start = None, 0
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            front, start = "\n".join(lines[1:end]), end + 1
    body_lines = [""] * start + lines[start:]
    body = "\n".join(body_lines)
    blocks: dict[int, Block] = {}
    steps = 0
    for fence in fences(body):  # the loader's own reading: which fences are steps
        block = Block(fence.line, fence.info, fence.content)
        try:
            _lang, attrs_text = split_info(fence.info)
            attrs = parse_attrs(attrs_text) if attrs_text is not None else None
        except AttrError:
            attrs = None
        if attrs is not None and not any(attrs.get(k, "").lower() == "true" for k in ("excludeFromRunAll", "background")):
            if "rollback" in attrs:
                block.undo_of = attrs["rollback"]
            else:
                steps += 1
                block.step = attrs.get("name") or f"step-{steps}"
        blocks[fence.line] = block
    return Doc(body_lines, front, start, blocks, markdown_parser().parse(body))


def markdown_parser() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


# -- the model both renderings show --------------------------------------------------------------


@dataclass
class Stream:
    name: str  # stdout, stderr
    lines: int
    earlier: str  # the lines before the tail ("" when the tail is all)
    tail: str


@dataclass
class Output:
    streams: list[Stream]
    msg: str | None
    rc: Any
    size: Any
    sha256: str | None
    truncated: bool


@dataclass
class HostView:
    name: str
    status: str
    css: str
    changed: str  # yes, no, unknown
    duration: Any
    error: str | None
    output: Output | None
    started_at: Any = None  # the host's own times, when the record has them
    ended_at: Any = None


@dataclass
class StepView:
    name: str
    anchor: str
    phase: str  # run, rollback
    kind: str
    targets: str
    status: str
    css: str
    duration: Any
    started_at: Any
    ended_at: Any
    hosts: list[HostView]
    ran: bool = True


@dataclass
class Bar:
    step: str
    phase: str
    status: str
    css: str
    x: float  # percent of the run's span
    w: float
    step_x: float  # the whole step's span, behind the host's bar
    step_w: float
    at: str  # offset from the run's start
    took: str


@dataclass
class Lane:
    host: str
    bars: list[Bar]


@dataclass
class Report:
    record: dict[str, Any]
    source: Source
    doc: Doc | None
    title: str
    outcome: str
    outcome_css: str
    facts: list[tuple[str, str]]
    params: list[tuple[str, str]]
    approvals: list[dict[str, Any]]
    steps: list[StepView]  # run phase, in execution order
    by_name: dict[str, StepView]
    not_in_file: list[StepView]  # steps the record has and the runbook file no longer does
    rollback: dict[str, Any] | None
    undo_steps: list[StepView]
    undo_by_name: dict[str, StepView]
    artifacts: dict[str, list[dict[str, Any]]]
    other_artifacts: list[tuple[str, str]]
    notices: list[dict[str, Any]]
    chain: list[tuple[str, str]]
    timeline: list[Lane]
    span: float
    generated_at: str
    version: str


def _output(raw: Any) -> Output | None:
    out = _d(raw)
    if not out:
        return None
    streams = []
    for name in ("stdout", "stderr"):
        text = out.get(name)
        if not isinstance(text, str) or not text:
            continue
        lines = text.rstrip("\n").split("\n")
        streams.append(Stream(name, len(lines), "\n".join(lines[:-TAIL_LINES]), "\n".join(lines[-TAIL_LINES:])))
    msg = out.get("msg")
    return Output(streams, as_text(msg) if msg not in (None, "") else None, out.get("rc"), out.get("bytes"),
                  as_text(out.get("sha256")) or None, bool(out.get("truncated")))


def _hosts(step: dict[str, Any]) -> list[HostView]:
    hosts = []
    for name, raw in _d(step.get("hosts")).items():
        h = _d(raw)
        changed = "unknown" if h.get("changed_unknown") else ("yes" if h.get("changed") else "no")
        hosts.append(HostView(str(name), as_text(h.get("status")) or "?", _status(h.get("status")), changed,
                              h.get("duration"), as_text(h.get("error")) or None, _output(h.get("output")),
                              h.get("started_at"), h.get("ended_at")))
    return hosts


def _steps(steps: Any, prefix: str) -> list[StepView]:
    items = [(str(name), _d(s)) for name, s in _d(steps).items()]
    items.sort(key=lambda item: (item[1].get("order") if isinstance(item[1].get("order"), int) else 1 << 30,
                                 item[1].get("started_at") or "", item[0]))
    return [StepView(name, f"{prefix}-{i}", as_text(s.get("phase")) or "run", as_text(s.get("kind")),
                     as_text(s.get("targets")), as_text(s.get("status")) or "?", _status(s.get("status")),
                     s.get("duration"), s.get("started_at"), s.get("ended_at"), _hosts(s))
            for i, (name, s) in enumerate(items, 1)]


_SECRET_FIELDS = ("old_version", "new_version", "rollback_version", "restored_version", "replaced_version")


def secret_versions(item: dict[str, Any]) -> str:
    """A secret_version artifact by its version numbers only (the record never holds a value)."""
    if item.get("rollback_version") is not None:
        text = (f"restored version {as_text(item.get('restored_version'))} as version "
                f"{as_text(item.get('rollback_version'))}, replacing {as_text(item.get('replaced_version'))}")
        return text + (" (the key was new: deleted)" if item.get("deleted") else "")
    text = f"version {as_text(item.get('old_version'))} → {as_text(item.get('new_version'))}"
    return text + (" (--check: not written)" if item.get("dry_run") else "")


def _artifacts(raw: Any) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, str]]]:
    known: dict[str, list[dict[str, Any]]] = {"backup": [], "secret_version": [], "terraform_plan": []}
    other: list[tuple[str, str]] = []
    for kind, items in _d(raw).items():
        for item in items if isinstance(items, list) else []:
            item = _d(item)
            if kind in known:
                known[kind].append(item)
            else:
                summary = item.get("summary")
                shown = {k: v for k, v in item.items() if k not in ("at", "summary") and not isinstance(v, (dict, list))}
                other.append((str(kind), as_text(summary) if summary else ", ".join(f"{k}={as_text(v)}" for k, v in shown.items())))
    return known, other


def _timeline(record: dict[str, Any], runs: list[StepView], undos: list[StepView]) -> tuple[list[Lane], float]:
    """Per host, a bar for each step from the step's start (or the host's own, when recorded) for the
    host's duration; the step's whole span drawn faintly behind it."""
    starts = [t for t in map(parse_when, [s.started_at for s in runs + undos] + [record.get("started_at")]) if t]
    if not starts:
        return [], 0.0
    origin = min(starts)
    ends = [t for t in map(parse_when, [s.ended_at for s in runs + undos] + [record.get("ended_at")]) if t]
    span = max([(t - origin).total_seconds() for t in ends] + [0.001])
    lanes: dict[str, Lane] = {}
    for step in runs + undos:
        begin = parse_when(step.started_at)
        if begin is None:
            continue
        end = parse_when(step.ended_at)
        step_len = (end - begin).total_seconds() if end else float(step.duration or 0)
        for host in step.hosts:
            h_begin = parse_when(host.started_at) or begin
            h_end = parse_when(host.ended_at)
            took = (h_end - h_begin).total_seconds() if h_end else (
                float(host.duration) if isinstance(host.duration, (int, float)) else step_len)
            offset = (h_begin - origin).total_seconds()
            took = max(0.0, min(took, span - offset))
            label = step.name if step.phase != "rollback" else f"undo {step.name}"
            lanes.setdefault(host.name, Lane(host.name, [])).bars.append(Bar(
                label, step.phase, host.status, host.css, _pct(offset, span), max(_pct(took, span), 0.4),
                _pct((begin - origin).total_seconds(), span), max(_pct(step_len, span), 0.4),
                f"+{seconds(offset)}", seconds(took)))
    return list(lanes.values()), span


def _pct(value: float, span: float) -> float:
    return round(min(max(value / span * 100.0, 0.0), 100.0), 3)


def build(record: dict[str, Any], source: Source) -> Report:
    """The report's content from a record (as ``store.get`` returns it) and the runbook's text."""
    record = cleaned(record)
    text = clean(source.text) if source.text is not None else None
    doc = parse_runbook(text) if text is not None else None
    runs = _steps(record.get("steps"), "step")
    rollback = _d(record.get("rollback")) or None
    undos = _steps(_d(rollback).get("steps"), "undo")
    by_name = {s.name: s for s in runs}
    not_run: list[StepView] = []
    placed: set[str] = set()
    if doc is not None:
        for block in doc.blocks.values():
            if block.step is None:
                continue
            view = by_name.get(block.step)
            if view is None:
                view = StepView(block.step, f"notrun-{len(not_run) + 1}", "run", "", "", "did not run", "not-run",
                                None, None, None, [], ran=False)
                not_run.append(view)
                by_name.setdefault(block.step, view)
            placed.add(block.step)
    not_in_file = [s for s in runs if s.name not in placed] if doc is not None else []
    outcome = as_text(record.get("outcome")) or "?"
    op, origin, git = _d(record.get("operator")), _d(record.get("origin")), _d(record.get("git"))
    facts = [
        ("run", as_text(record.get("run_id"))),
        ("outcome", outcome + (f" (exit {record['exit_code']})" if record.get("exit_code") is not None else "")),
    ]
    if record.get("failed_step"):
        failed = ", ".join(as_text(h) for h in record.get("failed_hosts") or [])
        facts.append(("failed step", as_text(record["failed_step"]) + (f" on {failed}" if failed else "")))
    if record.get("reason"):
        facts.append(("reason", as_text(record["reason"])))
    facts += [
        ("check mode", "yes (a dry run: nothing changed)" if record.get("check") else "no"),
        ("started", _stamp(record.get("started_at"))),
        ("ended", _stamp(record.get("ended_at")) + (f" ({seconds(record.get('duration'))})" if seconds(record.get("duration")) else "")),
        ("operator", f"{as_text(op.get('user'))}@{as_text(op.get('host'))}" + (f" (pid {as_text(op.get('pid'))})" if op.get("pid") else "")),
        ("origin", " ".join(as_text(v) for v in (origin.get("type"), origin.get("system"), origin.get("run_id")) if v)),
    ]
    if origin.get("url"):
        facts.append(("origin url", as_text(origin["url"])))
    controller = _d(record.get("controller"))
    if controller.get("name"):
        facts.append(("controller", as_text(controller["name"])
                      + (f" ({as_text(controller.get('host'))})" if controller.get("host") != controller["name"] else "")))
    facts.append(("runbook", f"{as_text(record.get('runbook'))} ({as_text(record.get('path'))})"))
    facts.append(("runbook sha256", as_text(record.get("runbook_sha256")) or "-"))
    if git:
        facts.append(("git", as_text(git.get("commit")) + (" (dirty)" if git.get("dirty") else "")
                      + (f" {as_text(git.get('branch'))}" if git.get("branch") else "")))
    if record.get("reaped"):
        facts.append(("finished by", "reaped: " + as_text(record["reaped"])))
    params = [(str(k), as_text(v)) for k, v in _d(record.get("params")).items()]
    known, other = _artifacts(record.get("artifacts"))
    sealed = record.get("seq") is not None
    chain = [("seq", as_text(record.get("seq")) if sealed else "not sealed yet: the run is still going"),
             ("hash", as_text(record.get("hash")) or "-"), ("prev hash", as_text(record.get("prev_hash")) or "-")]
    if record.get("events_sha256"):
        chain.append(("events sha256", as_text(record["events_sha256"])))
    for inv in record.get("inventory") or []:
        inv = _d(inv)
        chain.append(("inventory", f"{as_text(inv.get('path'))} ({as_text(inv.get('kind'))}) sha256 {as_text(inv.get('sha256')) or '-'}"))
    lanes, span = _timeline(record, runs, undos)
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("technician-ops")
    except PackageNotFoundError:  # pragma: no cover - a source checkout without an install
        ours = "?"
    return Report(
        record=record, source=source, doc=doc, title=as_text(record.get("runbook")) or "?", outcome=outcome,
        outcome_css={"succeeded": "ok", "rolled_back": "warn", "running": "warn"}.get(outcome, "bad"),
        facts=facts, params=params, approvals=[_d(a) for a in record.get("approvals") or []],
        steps=runs, by_name=by_name, not_in_file=not_in_file, rollback=rollback,
        undo_steps=undos, undo_by_name={s.name: s for s in undos}, artifacts=known, other_artifacts=other,
        notices=[_d(n) if isinstance(n, dict) else {"message": as_text(n)} for n in record.get("notices") or []],
        chain=chain, timeline=lanes, span=span,
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), version=ours)
