"""Plain-text renderings of a runbook and of an audit record (``show``)."""

from __future__ import annotations

from typing import Any

from technician_ops.runbook.model import Runbook

from technician_ops.state import CONTROL, printable

__all__ = ["CONTROL", "OUTPUT_LINES", "printable"]

OUTPUT_LINES = 10  # lines of a step's output shown per host, unless asked for all


def runbook_text(runbook: Runbook, hosts: dict[str, str] | None = None) -> str:
    """``hosts``: what each step targets (``api.show``: a playbook step's plays pick their own)."""
    from technician_ops import steps as kinds

    lines = [f"{runbook.name} — {runbook.summary}".rstrip(" —"), f"  file: {runbook.path}", f"  lock: {runbook.lock}"]
    if runbook.hosts:
        lines.append(f"  hosts: {runbook.hosts}")
    if runbook.schedule:
        lines.append(f"  schedule: {runbook.schedule}")
    lines.append("")
    lines.append("parameters:" if runbook.params else "parameters: none")
    for p in runbook.params.values():
        bits = [p.type + (f" ({'|'.join(p.choices)})" if p.choices else "")]
        bits.append("required" if p.required else f"default={p.default!r}")
        if p.name in runbook.secrets or p.secret:
            bits.append("secret")
        lines.append(f"  {p.name:20} {', '.join(bits)}" + (f"  — {p.help}" if p.help else ""))
    lines.append("")
    lines.append("steps:")
    registry = kinds.registry()
    for i, step in enumerate(runbook.steps, 1):
        kind = registry[step.kind]
        target = (hosts or {}).get(step.name) or ("controller" if kind.controller else (step.hosts or runbook.hosts or "?"))
        if step.name in runbook.undos:
            undo = f"undo at line {runbook.undos[step.name].line}"
        elif kind.has_auto_undo(step):
            undo = "automatic undo"
        elif not kind.changes_things(step):
            undo = "read-only"
        else:
            undo = "NO UNDO"
        lines.append(f"  {i:2}. {step.name:24} {step.kind:9} hosts={target:16} {undo}  (line {step.line})")
    return "\n".join(lines)


def _origin_detail(origin: dict[str, Any]) -> str:
    """`` (github-actions 42 URL)``: the origin's system, run and address, those it has."""
    system = origin.get("system") if origin.get("system") != origin.get("type") else None
    parts = [str(v) for v in (system, origin.get("run_id"), origin.get("url")) if v]
    return f" ({' '.join(parts)})" if parts and origin.get("system") else ""


def _controller(record: dict[str, Any], op: dict[str, Any]) -> str:
    """`` on controller NAME``, for a run whose controller has a name of its own (a team's shared store)."""
    name = (record.get("controller") or {}).get("name") if isinstance(record.get("controller"), dict) else None
    return f" on controller {name}" if name and name != op.get("host") else ""


def record_text(record: dict[str, Any]) -> str:
    op = record.get("operator") or {}
    origin = record.get("origin") or {}
    lines = [
        f"run {record.get('run_id')}  {record.get('runbook')}  {str(record.get('outcome', '')).upper()}"
        + ("  (check mode)" if record.get("check") else ""),
        f"  started {record.get('started_at')}  ended {record.get('ended_at')}",
        f"  by {op.get('user')}@{op.get('host')} via {origin.get('type')}" + _origin_detail(origin)
        + _controller(record, op),
        f"  runbook {record.get('path')} sha256 {str(record.get('runbook_sha256', ''))[:16]}"
        + (f" git {record['git'].get('commit', '')[:12]}{' (dirty)' if record['git'].get('dirty') else ''}" if record.get("git") else ""),
    ]
    alert = origin.get("alert")
    if isinstance(alert, dict):
        labels = ", ".join(f"{k}={v}" for k, v in (alert.get("labels") or {}).items())
        lines.append(f"  alert {alert.get('fingerprint')} from receiver {alert.get('receiver')} (started "
                     f"{alert.get('starts_at')}): {labels}")
    elif origin.get("alert_problem"):
        lines.append(f"  alert: not recorded: {origin['alert_problem']}")
    if record.get("reason"):
        lines.append(f"  reason: {record['reason']}")
    request = record.get("request")
    if isinstance(request, dict) and record.get("outcome") == "awaiting_approval":
        args = " ".join(f"-p {k}={v}" for k, v in sorted((request.get("params") or {}).items()))
        limit = f" --limit {request['limit']}" if request.get("limit") else ""
        lines.append(f"  held request: {request.get('runbook')} {args}{limit}".rstrip())
    if record.get("releases"):
        lines.append(f"  releases held run {record['releases']}")
    if record.get("params"):
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in record["params"].items()))
    for a in record.get("approvals") or []:
        lines.append(f"  approval: {a.get('step')} {'approved' if a.get('approved') else 'refused'} by {a.get('by')} ({a.get('user')})")
    steps = record.get("steps") or {}
    if steps:
        lines.append("  steps:")
    for step in _iter_steps(steps):
        lines.append(f"    {step.get('name')}: {step.get('status')} ({step.get('duration', 0)}s)")
        for host, h in (step.get("hosts") or {}).items():
            err = f" — {h.get('error')}" if h.get("error") else f" ({h['reason']})" if h.get("reason") else ""
            lines.append(f"      {host}: {h.get('status')} {h.get('duration', 0)}s{err}")
            if h.get("output"):
                lines += _output_lines(h["output"], f"show {record.get('run_id')} --step {step.get('name')} --host {host}")
    rollback = record.get("rollback") or {}
    if rollback:
        lines.append(f"  rollback: {rollback.get('outcome')} (undo order: {', '.join(rollback.get('planned') or []) or '-'})")
        for step in _iter_steps(rollback.get("steps") or {}):
            lines.append(f"    undo {step.get('name')}: {step.get('status')}")
            for host, h in (step.get("hosts") or {}).items():
                lines.append(f"      {host}: {h.get('status')}" + (f" — {h.get('error')}" if h.get("error") else ""))
        for f in rollback.get("failures") or []:
            lines.append(f"    FAILED undo {f.get('step')} on {f.get('host')}: {f.get('error')}")
    for kind, items in (record.get("artifacts") or {}).items():
        for item in items:
            lines.append(f"  {kind}: {item}")
    for note in record.get("notices") or []:
        lines.append(f"  note: {note.get('message') if isinstance(note, dict) else note}")
    if record.get("artifact_dir"):
        lines.append(f"  artifacts: {record['artifact_dir']}")
    return "\n".join(lines)


def _output_lines(out: dict[str, Any], full: str) -> list[str]:
    lines = [f"        | {t}" for t in str(out.get("stdout") or "").splitlines()]
    lines += [f"        ! {t}" for t in str(out.get("stderr") or "").splitlines()]
    if out.get("msg"):
        lines += [f"        | {t}" for t in str(out["msg"]).splitlines()]
    if len(lines) > OUTPUT_LINES:
        lines = [f"        … {len(lines) - OUTPUT_LINES} earlier line(s): {full}", *lines[-OUTPUT_LINES:]]
    return lines


def output_text(record: dict[str, Any], step: str, host: str) -> str:
    """One step's whole kept output on one host (``show RUN_ID --step S --host H``)."""
    from technician_ops.errors import NotFound

    steps = {s.get("name"): s for s in _iter_steps(record.get("steps") or {})}
    undo = {s.get("name"): s for s in _iter_steps((record.get("rollback") or {}).get("steps") or {})}
    found = steps.get(step) or undo.get(step)
    if found is None:
        raise NotFound(f"run {record.get('run_id')} has no step {step!r}", hint=f"its steps: {', '.join(map(str, steps)) or 'none'}")
    h = (found.get("hosts") or {}).get(host)
    if h is None:
        raise NotFound(f"step {step!r} of run {record.get('run_id')} did not run on {host!r}",
                       hint=f"it ran on: {', '.join(found.get('hosts') or {}) or 'no host'}")
    out = h.get("output") or {}
    parts = [f"{step} on {host}: {h.get('status')}" + (f" (rc {out['rc']})" if out.get("rc") is not None else "")]
    if h.get("error"):
        parts.append(f"error: {h['error']}")
    for label in ("stdout", "stderr"):
        if out.get(label):
            parts += [f"--- {label}", str(out[label]).rstrip("\n")]
    if out.get("msg"):
        parts += ["--- msg", str(out["msg"])]
    if out.get("truncated"):
        parts.append(f"--- cut: the middle of a long output is not kept; the whole was {out.get('bytes')} bytes, "
                     f"sha256 {out.get('sha256')}")
    if not out:
        parts.append("(no output)")
    return "\n".join(parts)


def _iter_steps(steps: Any) -> list[dict[str, Any]]:
    if isinstance(steps, dict):
        items = [{"name": k, **v} for k, v in steps.items()]
        return sorted(items, key=lambda s: s.get("order", 0))
    return list(steps or [])
