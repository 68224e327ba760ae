"""``postmortem``: every fact from the records, nothing invented, every value inert Markdown."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from technician_ops.audit.fold import finalize, fold
from technician_ops.errors import ExitCode, NotFound, UsageError
from technician_ops.outputs.postmortem import OUTPUT_LINES, TO_FILL, draft, fence, md

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def ts(seconds: float) -> float:
    return T0.timestamp() + seconds


def record(run_id: str, start: float, steps: list[tuple[str, dict[str, tuple[str, str | None]]]], *,
           outcome: str = "succeeded", runbook: str = "release", rollback: list[tuple[str, dict[str, tuple[str, str | None]]]] | None = None,
           origin: dict[str, Any] | None = None, outputs: dict[tuple[str, str], dict[str, Any]] | None = None,
           check: bool = False, exit_code: int = 0, reason: str | None = None) -> dict[str, Any]:
    """A record as the store folds it: steps[i] = (name, {host: (status, error)}), each step 10 s long."""
    header = {"run_id": run_id, "runbook": runbook, "path": f"runbooks/{runbook}.md", "runbook_sha256": "ab" * 32,
              "params": {"release": "r1"}, "operator": {"user": "alice", "host": "ops1", "pid": 1},
              "origin": origin or {"type": "terminal", "system": None, "run_id": None, "url": None},
              "check": check, "started_at": dt.datetime.fromtimestamp(ts(start), dt.timezone.utc).isoformat()}
    events: list[tuple[str, dict[str, Any], float]] = []
    t = start

    def play(items: list[tuple[str, dict[str, tuple[str, str | None]]]], phase: str) -> None:
        nonlocal t
        for name, hosts in items:
            events.append(("step_start", {"step": name, "kind": "shell", "hosts": "web", "phase": phase}, ts(t)))
            for host, (status, error) in hosts.items():
                events.append(("host_result", {"step": name, "host": host, "status": status, "changed": status == "changed",
                                               "duration": 1.0, "error": error, "phase": phase}, ts(t + 9)))
            failed = any(s in ("failed", "unreachable") for s, _ in hosts.values())
            events.append(("step_end", {"step": name, "status": "failed" if failed else "succeeded", "duration": 10.0,
                                        "phase": phase, "hosts": {h: s for h, (s, _) in hosts.items()}}, ts(t + 10)))
            t += 10

    play(steps, "run")
    if rollback is not None:
        events.append(("rollback_start", {"steps": [n for n, _ in rollback]}, ts(t + 1)))
        play(rollback, "rollback")
        events.append(("rollback_end", {"outcome": "rolled_back", "failures": []}, ts(t + 1)))
    failed_step = next((n for n, hosts in steps if any(s == "failed" for s, _ in hosts.values())), None)
    events.append(("run_end", {"outcome": outcome, "exit_code": exit_code, "duration": t + 2 - start,
                               "failed_step": failed_step}, ts(t + 2)))
    rec = finalize(fold(header, events), outcome, None, reason)
    for (step, host), out in (outputs or {}).items():
        rec["steps"][step]["hosts"][host]["output"] = out
    rec.update(seq=1, hash="cd" * 32, prev_hash="00" * 32)
    return rec


def times_in(rec: dict[str, Any]) -> set[str]:
    """Every time the record holds, in the draft's form (seconds, UTC, truncated)."""
    found: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and (key.endswith("_at") or key == "at"):
            found.add(dt.datetime.fromisoformat(value).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    walk(rec)
    return found


def parse(text: str) -> list[Any]:
    # CommonMark with raw HTML on (so an injection would show as an html token), GFM tables and strikethrough
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).parse(text)


def tables(tokens: list[Any]) -> list[list[list[str]]]:
    """Each table as rows of cell texts (header row first), read from the parsed tokens."""
    out: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for tok in tokens:
        if tok.type == "table_open":
            current = []
        elif tok.type == "tr_open" and current is not None:
            current.append([])
        elif tok.type == "inline" and current:
            current[-1].append(shown(tok))
        elif tok.type == "table_close" and current is not None:
            out.append(current)
            current = None
    return out


def shown(inline: Any) -> str:
    """The text a reader sees of an inline token (escapes resolved)."""
    return "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))


def table_after(text: str, header: str) -> list[dict[str, str]]:
    for rows in tables(parse(text)):
        if rows and rows[0] and rows[0][0] == header.split(" | ")[0] and " | ".join(rows[0]) == header:
            return [dict(zip(rows[0], r)) for r in rows[1:]]
    raise AssertionError(f"no table {header!r}")


FAILED = record("01aa0000-0000-7000-8000-000000000001", 0,
                [("ship", {"web1": ("changed", None), "web2": ("changed", None)}),
                 ("health-check", {"web1": ("failed", "unhealthy after r1; rc=1"), "web2": ("failed", "unhealthy after r1; rc=1")})],
                outcome="rolled_back", exit_code=3, rollback=[("ship", {"web1": ("changed", None), "web2": ("changed", None)})],
                origin={"type": "cron", "system": None, "run_id": None, "url": None},
                outputs={("health-check", "web1"): {"stdout": "checking\nHTTP 503", "stderr": "", "msg": None, "rc": 1,
                                                     "bytes": 17, "sha256": "ef" * 32, "truncated": False},
                         ("health-check", "web2"): {"stdout": "checking\nHTTP 503", "stderr": "", "msg": None, "rc": 1,
                                                     "bytes": 17, "sha256": "ef" * 32, "truncated": False}})
FIXED = record("01aa0000-0000-7000-8000-000000000002", 600, [("ship", {"web1": ("changed", None), "web2": ("changed", None)}),
                                                           ("health-check", {"web1": ("ok", None), "web2": ("ok", None)})])


def test_runs_in_any_order_are_drafted_oldest_first() -> None:
    text = draft([FIXED, FAILED])
    runs = table_after(text, "run | run id | runbook | started (UTC) | ended (UTC) | duration | outcome | exit code | "
                             "operator | origin | mode")
    assert [(r["run"], r["run id"], r["outcome"]) for r in runs] == [
        ("R1", FAILED["run_id"], "rolled_back"), ("R2", FIXED["run_id"], "succeeded")]
    assert runs[0]["started (UTC)"] == "2026-03-01T12:00:00Z" and runs[0]["origin"] == "cron"
    assert text.startswith("# Post-mortem draft: release, 2026-03-01\n")
    assert draft([FAILED, FIXED]) == text


def test_every_time_host_and_step_in_the_draft_is_in_the_records() -> None:
    records = [FAILED, FIXED]
    text = draft(records)
    known_times = set().union(*(times_in(r) for r in records))
    assert set(TIME.findall(text)) <= known_times
    assert len(set(TIME.findall(text))) >= 8  # the timeline really uses them
    hosts = {h for r in records for s in r["steps"].values() for h in s["hosts"]}
    steps = {s for r in records for s in r["steps"]}
    impact = table_after(text, "host | run | steps (status) | undo steps (status)")
    assert {row["host"] for row in impact} == hosts
    for row in impact:
        for item in row["steps (status)"].split(", "):
            assert item.split(" (")[0] in steps
    timeline = table_after(text, "time (UTC) | run | phase | what the record says")
    assert {row["time (UTC)"] for row in timeline} <= known_times
    for row in timeline:
        for name in re.findall(r"step (\S+)", row["what the record says"]):
            assert name in steps, row
        for host in re.findall(r"(?:failed|ok|changed) on (\S+?):", row["what the record says"]):
            assert host in hosts, row


def test_resolve_only_when_the_latest_run_succeeded() -> None:
    fixed_last = draft([FAILED, FIXED])
    timeline = table_after(fixed_last, "time (UTC) | run | phase | what the record says")
    assert [(r["run"], r["phase"]) for r in timeline if r["phase"] == "resolve"] == [("R2", "resolve")]
    assert timeline[-1]["phase"] == "resolve" and "outcome succeeded" in timeline[-1]["what the record says"]

    failed_last = record("01aa0000-0000-7000-8000-000000000003", 1200, [("ship", {"web1": ("failed", "disk full")})],
                         outcome="failed", exit_code=1)
    for text in (draft([FAILED]), draft([FIXED, failed_last]), draft([FAILED, FIXED, failed_last])):
        phases = {r["phase"] for r in table_after(text, "time (UTC) | run | phase | what the record says")}
        assert "resolve" not in phases
        for claim in ("resolve", "fixed", "root cause was", "successfully", "recovered", "outage", "because"):
            assert claim not in text.lower(), claim
    dry = record("01aa0000-0000-7000-8000-000000000004", 1800, [("ship", {"web1": ("ok", None)})], check=True)
    assert "resolve" not in {r["phase"] for r in table_after(draft([FAILED, dry]), "time (UTC) | run | phase | what the record says")}


def test_the_first_why_names_the_first_failure_and_the_rest_is_to_fill() -> None:
    text = draft([FIXED, FAILED])
    assert "1. Why did step health-check end failed on web1, web2 in R1? — _TO FILL_" in text
    for heading in ("## Root cause — TO FILL", "## What went well — TO FILL", "## What went badly — TO FILL",
                    "## Action items — TO FILL"):
        assert heading in text
    assert len(re.findall(r"^\d\. Why\? — _TO FILL_$", text, re.M)) == 4
    assert text.count(TO_FILL) >= 12
    assert "1. Why were R1 run? — _TO FILL_" in draft([FIXED])


def test_failed_hosts_output_is_grouped_tailed_and_fenced() -> None:
    text = draft([FAILED])
    assert text.count("**step health-check**, failed on web1, web2:") == 1  # identical results, one block
    assert "```\nchecking\nHTTP 503\n```" in text and "Return code: 1." in text
    assert f"Output recorded: 17 bytes, sha256 {'ef' * 32}." in text
    long = "\n".join(f"line {i}" for i in range(1, 101))
    rec = record("01aa0000-0000-7000-8000-000000000005", 0, [("migrate", {"db1": ("failed", "rc=2")})], outcome="failed",
                 outputs={("migrate", "db1"): {"stdout": long, "stderr": "boom", "msg": "non-zero return code", "rc": 2,
                                                "bytes": 99999, "sha256": "01" * 32, "truncated": True}})
    text = draft([rec])
    assert f"stdout (its last {OUTPUT_LINES} of 100 lines):" in text
    assert "line 61\n" in text and "line 60\n" not in text and "line 100\n```" in text
    assert "```\nboom\n```" in text and "```\nnon-zero return code\n```" in text
    assert "cut in the record (its start and end kept)" in text
    ok_only = draft([FIXED])
    assert "No host failed a step in this run." in ok_only and "Error:" not in ok_only


def test_a_refused_run_has_its_reason_and_no_invented_exit_code() -> None:
    refused = finalize(fold({"run_id": "01aa0000-0000-7000-8000-000000000006", "runbook": "restart",
                             "started_at": T0.isoformat(), "operator": {"user": "bob", "host": "h"}}, []),
                       "refused", T0.isoformat(), "missing required parameter 'reason'")
    text = draft([refused])
    assert "Latest run (R1): outcome refused." in text
    assert "exit code" not in text.split("## Timeline")[1].split("## What was done")[0]
    assert "reason: missing required parameter 'reason'" in text
    assert "Steps: none recorded." in text and "Hosts the runs' steps reached: 0." in text


ATTACKS = [
    "# heading",
    "x #",
    "[click](http://evil.invalid)",
    "![img](http://evil.invalid/x.png)",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "a | b | c",
    "**bold** _em_ ~~gone~~ $x$",
    "`code` ``more``",
    "&lt;entity&gt; &#60;",
    "\\",
    "line1\n# line two\n---",
    "\u202eevil\u200b",
]


@pytest.mark.parametrize("value", ATTACKS)
def test_md_keeps_any_value_literal(value: str) -> None:
    tokens = parse(f"Value: {md(value)} end")
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    children = tokens[1].children or []
    assert {c.type for c in children} <= {"text", "softbreak"}, [c.type for c in children]
    shown = "".join(c.content for c in children)
    expected = value.replace("\n", " \u21b5 ").replace("\u202e", "\ufffd").replace("\u200b", "\ufffd")
    assert shown == f"Value: {expected} end"


@pytest.mark.parametrize("body", ["plain", "```\n# not a heading\n```", "a ```` b\n`````", "`", "ends with `", ""])
def test_fence_holds_any_text(body: str) -> None:
    tokens = parse(f"before\n\n{fence(body)}\n\n# after\n")
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1 and fences[0].content == (body + "\n" if body else "\n" if body == "" else body)
    assert [t.content for t in tokens if t.type == "inline"] == ["before", "after"]


def test_hostile_names_errors_and_output_cannot_reshape_the_draft() -> None:
    host = "web1 | [x](http://evil.invalid) <b>"
    step = "# deploy ![i](http://evil.invalid/i.png)"
    error = "failed\n# Root cause: the intern\n<script>alert(1)</script>"
    stdout = "````\n```\n# Injected heading\n<iframe src=http://evil.invalid></iframe>\n[a](http://evil.invalid)"
    runbook = "rb_<i>x</i>"
    rec = record("01aa0000-0000-7000-8000-000000000007", 0, [(step, {host: ("failed", error)})], outcome="failed",
                 runbook=runbook, exit_code=1,
                 origin={"type": "alertmanager", "alertname": "[High](http://evil.invalid) <b>", "url": None},
                 outputs={(step, host): {"stdout": stdout, "stderr": "", "msg": error, "rc": 1, "bytes": 80,
                                         "sha256": "aa" * 32, "truncated": False}})
    rec["params"] = {"note": "![x](http://evil.invalid)"}
    text = draft([rec])
    tokens = parse(text)
    headings = [shown(tokens[i + 1]) for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [f"Post-mortem draft: {runbook}, 2026-03-01", "Summary", "Impact", "Timeline (UTC)",
                        "What was done", f"R1: {runbook}, outcome failed", "Root cause — TO FILL",
                        "What went well — TO FILL", "What went badly — TO FILL", "Where we were lucky — TO FILL",
                        "Action items — TO FILL", "Sources"]
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in t.children or []}
    assert not kinds & {"html_block", "html_inline", "link_open", "image"}, kinds
    fenced = [t.content for t in tokens if t.type == "fence"]
    assert stdout + "\n" in fenced and error + "\n" in fenced  # whole, inside fences
    assert fenced.count(error + "\n") == 1  # the message repeats the error: shown once
    impact = table_after(text, "host | run | steps (status) | undo steps (status)")
    assert [(r["host"], r["steps (status)"]) for r in impact] == [(host, f"{step} (failed)")]
    timeline = table_after(text, "time (UTC) | run | phase | what the record says")
    assert all(len(r) == 4 for r in timeline)
    detect = [r["what the record says"] for r in timeline if r["phase"] == "detect"]
    assert detect == ["origin type alertmanager (alertname [High](http://evil.invalid) <b>)"]
    assert any(r["what the record says"] == f"step {step} failed on {host}: failed" for r in timeline)


# -- through the API and the CLI, on a real SQLite store ----------------------------------------


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list[str]]:
    from technician_ops.audit import open_store
    from tests.audit.helpers import ev, make_header, step
    from technician_ops.events import Kind

    root = tmp_path / "proj"
    (root / "runbooks").mkdir(parents=True)
    ids = []
    with open_store(None, root) as store:
        for i, (outcome, status) in enumerate((("rolled_back", "failed"), ("succeeded", "changed"))):
            header = make_header("db-failover", started_at=(T0 + dt.timedelta(minutes=10 * i)).isoformat())
            store.start_run(header)
            step(store, header["run_id"], "promote", {"db2": (status, status == "changed", "boom" if status == "failed" else None)},
                 status="failed" if status == "failed" else "succeeded")
            store.append(header["run_id"], ev(Kind.RUN_END, outcome=outcome, exit_code=3 if i == 0 else 0))
            ids.append(store.finish(header["run_id"], outcome)["run_id"])
    return root, ids


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_api_resolves_prefixes_drafts_a_run_once_and_writes_atomically(stored: tuple[Path, list[str]], tmp_path: Path) -> None:
    from technician_ops.api import open_project, postmortem

    root, ids = stored
    project = open_project(root, environ={})
    out = tmp_path / "pm.md"
    text = postmortem(project, [ids[1][:13], ids[0], ids[1]], out=out)
    assert out.read_text() == text and stat.S_IMODE(os.stat(out).st_mode) == 0o600
    runs = table_after(text, "run | run id | runbook | started (UTC) | ended (UTC) | duration | outcome | exit code | "
                             "operator | origin | mode")
    assert [(r["run"], r["run id"], r["outcome"]) for r in runs] == [("R1", ids[0], "rolled_back"),
                                                                    ("R2", ids[1], "succeeded")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".pm", "pm"))) == ["pm.md"]
    with pytest.raises(NotFound):
        postmortem(project, [ids[0], "0123456789ab"])
    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(UsageError, match="symbolic link"):
        postmortem(project, [ids[0]], out=link)
    assert not (tmp_path / "elsewhere.md").exists()


def test_cli_prints_or_writes_and_fails_with_usage_codes(stored: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = stored
    proc = cli("--project", str(root), "postmortem", ids[1], ids[0])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Post-mortem draft: db-failover, 2026-03-01\n") and "promote" in proc.stdout
    out = tmp_path / "pm.md"
    wrote = cli("--project", str(root), "postmortem", ids[0], "-o", str(out))
    assert (wrote.returncode, wrote.stdout) == (0, "") and out.read_text().startswith("# Post-mortem draft")
    unknown = cli("--project", str(root), "postmortem", "0123456789abcdef")
    assert unknown.returncode == ExitCode.USAGE and "error: no run '0123456789abcdef'" in unknown.stderr
    missing = cli("--project", str(root), "postmortem")
    assert missing.returncode == ExitCode.USAGE and "Missing argument" in missing.stderr
    nodir = cli("--project", str(root), "postmortem", ids[0], "-o", str(tmp_path / "no" / "pm.md"))
    assert nodir.returncode == ExitCode.USAGE and "is not a directory" in nodir.stderr
    for p in (unknown, missing, nodir):
        assert "Traceback" not in p.stderr and "internal error" not in p.stderr


def test_a_run_still_going_has_no_end_and_is_said_unsealed() -> None:
    header = {"run_id": "01aa0000-0000-7000-8000-000000000008", "runbook": "release", "started_at": T0.isoformat(),
              "operator": {"user": "alice", "host": "ops1"}, "origin": {"type": "ci", "system": "gitlab-ci",
                                                                          "run_id": "77", "url": "https://ci.invalid/77"}}
    going = fold(header, [("step_start", {"step": "ship", "kind": "shell", "hosts": "web", "phase": "run"}, ts(5))])
    going.update(seq=None, hash=None, prev_hash=None)
    text = draft([going])
    timeline = table_after(text, "time (UTC) | run | phase | what the record says")
    assert [(r["phase"], r["what the record says"]) for r in timeline] == [
        ("detect", "origin type ci (run_id 77, system gitlab-ci, url https://ci.invalid/77)"),
        ("act", f"run {going['run_id']} of release started by alice@ops1"),
        ("act", "step ship (shell) started on web")]
    assert "Latest run (R1): outcome running." in text
    assert f"R1: run {going['run_id']}, not sealed yet (outcome running when read)" in text


def test_approvals_and_artifacts_are_reported_as_recorded() -> None:
    rec = record("01aa0000-0000-7000-8000-000000000009", 0, [("restart", {"web1": ("changed", None)})])
    rec["approvals"] = [{"step": "go-ahead", "approved": True, "by": "--approve", "user": "alice",
                         "at": (T0 + dt.timedelta(seconds=3)).isoformat()}]
    rec["artifacts"]["backup"] = [{"host": "web1", "path": "/etc/app.conf", "sha256": "12" * 32,
                                   "at": (T0 + dt.timedelta(seconds=4)).isoformat()}]
    text = draft([rec])
    timeline = table_after(text, "time (UTC) | run | phase | what the record says")
    assert ("2026-03-01T12:00:03Z", "act", "step go-ahead approved by --approve (user alice)") in [
        (r["time (UTC)"], r["phase"], r["what the record says"]) for r in timeline]
    assert f"- 2026-03-01T12:00:04Z backup: host web1, path /etc/app.conf, sha256 {'12' * 32}" in text
