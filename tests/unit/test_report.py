"""The run report, rendered from crafted records: order, placement, and every value kept as data.

The attacks are values a runbook, an operator or a host can put in a record: markup (``<script>``,
``</details>``), Markdown fences that try to close the report's own, template syntax, ANSI escapes
and lone surrogates.  Markdown output is checked the way a reader sees it: parsed by a CommonMark
parser with raw HTML on, as a Markdown viewer would.
"""

from __future__ import annotations

import copy
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from technician_ops.errors import NotFound, UsageError
from technician_ops.outputs.report import TAIL_LINES, build, clean, read_runbook
from technician_ops.outputs.run_report import render

RUNBOOK = """\
---
name: demo
hosts: web
---

# Demo release

Prose with <script>alert('prose')</script> and <!-- a comment that never closes
and an image ![pixel](https://tracker.example/p.png) and a [link](https://docs.example/x).

```yaml {name=ship}
- ansible.builtin.copy: {dest: /tmp/x, content: "{{ release }}"}
```

```yaml {rollback=ship}
- ansible.builtin.file: {path: /tmp/x, state: absent}
```

```sh {name=check kind=check}
test -f /tmp/x
```

```sh
# documentation: never runs
```

```sh {name=later}
echo never reached
```
"""

T0 = "2026-01-01T10:00:00.000000Z"


def _at(seconds: float) -> str:
    return f"2026-01-01T10:00:{seconds:09.6f}Z"


def host(status: str = "changed", duration: float = 2.0, error: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"status": status, "changed": status == "changed", "duration": duration, "error": error, **extra}


def make_record(path: Path | None = None, text: str = RUNBOOK, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": 1, "run_id": "01a2aaaa-0000-7000-8000-000000000001", "runbook": "demo",
        "path": str(path) if path else "/nonexistent/demo.md",
        "runbook_sha256": hashlib.sha256(text.encode()).hexdigest(), "git": None,
        "params": {"release": "r1", "token": "********"},
        "operator": {"user": "alice", "host": "laptop", "pid": 42},
        "origin": {"type": "terminal", "system": None, "run_id": None, "url": None}, "check": False,
        "started_at": T0, "ended_at": _at(40), "duration": 40.0, "outcome": "rolled_back", "exit_code": 3,
        "reason": None, "failed_step": "check", "failed_hosts": ["web2"],
        "approvals": [{"step": "gate", "approved": True, "by": "--yes", "user": "alice", "at": _at(1)}],
        "steps": {
            # dict order is not execution order: ``order`` is
            "check": {"name": "check", "kind": "check", "targets": "web", "phase": "run", "status": "failed", "order": 1,
                      "started_at": _at(20), "ended_at": _at(24), "duration": 4.0,
                      "hosts": {"web1": host("ok", 1.0),
                                "web2": host("failed", 3.0, "check: non-zero return code; rc=1",
                                             output={"stdout": "", "stderr": "no such file: /tmp/x\n", "msg": "non-zero return code",
                                                     "rc": 1, "bytes": 21, "sha256": "ab" * 32, "truncated": False})}},
            "ship": {"name": "ship", "kind": "ansible", "targets": "web", "phase": "run", "status": "succeeded", "order": 0,
                     "started_at": _at(10), "ended_at": _at(20), "duration": 10.0,
                     "hosts": {"web1": host(duration=5.0), "web2": host(duration=8.0)}},
        },
        "rollback": {"planned": ["ship"], "outcome": "rolled_back", "failures": [], "started_at": _at(25), "ended_at": _at(35),
                     "steps": {"ship": {"name": "ship", "kind": "undo", "targets": "web1,web2", "phase": "rollback",
                                        "status": "succeeded", "order": 0, "started_at": _at(26), "ended_at": _at(30),
                                        "duration": 4.0, "hosts": {"web1": host(duration=2.0), "web2": host(duration=3.0)}}}},
        "artifacts": {"backup": [], "secret_version": [], "terraform_plan": []},
        "notices": [], "events": 20, "events_sha256": "ef" * 32, "seq": 7, "prev_hash": "cd" * 32, "hash": "ab" * 32,
    }
    record.update(over)
    return record


@pytest.fixture
def runbook(tmp_path: Path) -> Path:
    path = tmp_path / "runbooks" / "demo.md"
    path.parent.mkdir()
    path.write_text(RUNBOOK)
    return path


def viewer_html(markdown: str) -> str:
    """What a Markdown viewer shows: CommonMark with raw HTML passed through."""
    return MarkdownIt("commonmark").enable("table").render(markdown)


class Tags(HTMLParser):
    """Start tags and the text inside each element, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "br", "rect", "line", "hr", "img", "input", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        for tag in set(self.stack):
            self.text.setdefault(tag, []).append(data)

    def count(self, name: str) -> int:
        return sum(tag == name for tag, _ in self.tags)


# -- order and placement -----------------------------------------------------------------------


def test_markdown_puts_each_steps_results_right_after_its_block(runbook: Path) -> None:
    md = render(make_record(runbook), "md")
    order = [md.index(s) for s in ("```yaml {name=ship}", "**ship: SUCCEEDED**", "```yaml {rollback=ship}",
                                   "*Undo of ship: ran during the rollback: succeeded", "```sh {name=check kind=check}",
                                   "**check: FAILED**", "# documentation: never runs", "```sh {name=later}",
                                   "**later did not run.**", "## Approvals", "## Rollback", "## Artifacts", "## Audit chain")]
    assert order == sorted(order)
    assert "### Demo release" in md  # the runbook's headings sit under the report's
    section = md[md.index("**check: FAILED**"):md.index("# documentation")]
    assert "| web2 | failed | no | 3.0 s |" in section and "check: non-zero return code; rc=1" in section
    assert "no such file: /tmp/x" in section and "rc 1, 21 bytes" in section


def test_html_replaces_each_step_fence_by_its_card_in_runbook_order(runbook: Path) -> None:
    html = render(make_record(runbook), "html")
    cards = re.findall(r'<article class="step s-([a-z-]+)" id="[^"]+" data-step="([^"]+)" data-phase="(\w+)"', html)
    assert cards == [("succeeded", "ship", "run"), ("failed", "check", "run"), ("not-run", "later", "run"),
                     ("succeeded", "ship", "rollback")]
    assert html.index("Demo release</h3>") < html.index('data-step="ship"')
    assert html.index("# documentation: never runs") < html.index('data-step="later"')
    failed = html[html.index('data-step="check"'):html.index('data-step="later"')]
    assert 'data-host="web2" data-status="failed"' in failed
    assert "check: non-zero return code; rc=1" in failed and "no such file: /tmp/x" in failed


def test_rollback_is_shown_in_the_order_it_ran(runbook: Path) -> None:
    record = make_record(runbook)
    undo = record["rollback"]["steps"]["ship"]
    record["rollback"]["planned"] = ["check-undo", "ship"]
    record["rollback"]["steps"] = {  # newest first by ``order``, whatever the dict's order
        "ship": {**undo, "order": 1, "started_at": _at(31), "ended_at": _at(33)},
        "check-undo": {**copy.deepcopy(undo), "name": "check-undo", "order": 0, "status": "failed",
                       "hosts": {"web2": host("failed", 1.0, "undo broke")}},
    }
    record["rollback"]["failures"] = [{"step": "check-undo", "host": "web2", "error": "undo broke"}]
    md = render(record, "md")
    assert md.index("### 1. undo check-undo") < md.index("### 2. undo ship")
    assert "Undo order (newest first): check-undo, ship" in md
    assert "- undo check-undo on web2:" in md
    html = render(record, "html")
    rollback = html[html.index('id="rollback"'):]
    assert rollback.index('data-step="check-undo"') < rollback.index('data-step="ship"')
    assert "Undo failures: a human is needed." in rollback


def test_header_params_approvals_and_chain(runbook: Path) -> None:
    md = render(make_record(runbook), "md")
    assert "| token | \\*\\*\\*\\*\\*\\*\\*\\* |" in md  # redacted in the record: shown as redacted
    assert "| gate | yes | --yes | alice | 10:00:01 |" in md
    assert f"| seq | 7 |\n| hash | {'ab' * 32} |\n| prev hash | {'cd' * 32} |" in md
    running = render(make_record(runbook, seq=None, hash=None, prev_hash=None, outcome="running"), "md")
    assert "not sealed yet" in running


def test_the_controller_is_named_when_a_team_store_has_several(runbook: Path) -> None:
    md = render(make_record(runbook, controller={"name": "ops-eu-1", "host": "box7"}), "md")
    assert "| controller | ops-eu-1 (box7) |" in md
    assert "| controller | box7 |" in render(make_record(runbook, controller={"name": "box7", "host": "box7"}), "md")
    assert "| controller |" not in render(make_record(runbook), "md")  # a record from before controllers


def test_artifacts_show_backups_secret_versions_by_number_and_plan_summaries(runbook: Path) -> None:
    artifacts = {
        "backup": [{"step": "save", "host": "web1", "source": "files", "path": "/state/b.tar", "sha256": "12" * 32, "size": 2048}],
        "secret_version": [{"step": "rotate", "mount": "secret", "path": "db/app", "key": "password", "old_version": 3,
                            "new_version": 4, "value": "hunter2-must-not-show"},
                           {"step": "rotate", "mount": "secret", "path": "db/app", "key": "password", "rollback_version": 5,
                            "restored_version": 3, "replaced_version": 4, "deleted": False}],
        "terraform_plan": [{"step": "infra", "module": "terraform/demo", "workspace": "default", "adds": ["terraform_data.a"],
                            "changes": [], "destroys": ["terraform_data.old"], "replaces": [], "destroy": False,
                            "summary": "terraform/demo: +1 ~0 -1"}],
        "backup_restored": [{"step": "save", "host": "web1", "summary": "restored b.tar on web1"}],
    }
    for fmt in ("md", "html"):
        out = render(make_record(runbook, artifacts=artifacts), fmt)
        out = viewer_html(out) if fmt == "md" else out
        assert "12" * 32 in out and "/state/b.tar" in out
        assert "version 3 → 4" in out
        assert "restored version 3 as version 5, replacing 4" in out
        assert "hunter2" not in out  # a secret_version is shown by its numbers, never by any other field
        assert "terraform/demo: +1 ~0 -1" in out and "terraform_data.old" in out
        assert "restored b.tar on web1" in out


def test_output_shows_the_tail_and_in_html_the_rest_behind_details(runbook: Path) -> None:
    record = make_record(runbook)
    lines = [f"line {i}" for i in range(1, 51)]
    record["steps"]["ship"]["hosts"]["web1"]["output"] = {"stdout": "\n".join(lines) + "\n", "stderr": "", "msg": None,
                                                          "rc": 0, "bytes": 400, "sha256": "aa" * 32, "truncated": True}
    md = render(record, "md")
    assert f"stdout (last {TAIL_LINES} of 50 lines):" in md and "cut when recorded" in md
    assert "line 31\n" in md and "line 30\n" not in md
    html = render(record, "html")
    page = Tags(html)
    earlier = "".join(page.text["details"])
    assert "line 1\n" in earlier and "line 30" in earlier and "line 31" not in earlier
    assert "show the 30 earlier lines" in html


def test_no_output_in_the_record_is_fine(runbook: Path) -> None:
    record = make_record(runbook)
    for step in record["steps"].values():
        for h in step["hosts"].values():
            h.pop("output", None)
    del record["approvals"], record["notices"], record["artifacts"], record["events_sha256"]
    record["steps"]["ship"]["hosts"]["web1"] = {"status": "ok"}  # an older, thinner record
    md, html = render(record, "md"), render(record, "html")
    assert "| web1 | ok | no |  |" in md and " output (" not in md
    assert 'data-host="web1" data-status="ok"' in html and 'class="output"' not in html


# -- the runbook file ---------------------------------------------------------------------------


def test_a_changed_runbook_is_said_loudly_and_still_rendered(runbook: Path) -> None:
    record = make_record(runbook)
    runbook.write_text(RUNBOOK.replace("# Demo release", "# Demo release, edited later"))
    md = render(record, "md")
    assert md.splitlines()[2].startswith("> **WARNING:** the runbook file changed since this run")
    assert record["runbook_sha256"] in md and "Demo release, edited later" in md
    html = render(record, "html")
    banner = html[html.index('<div class="banner" role="alert" id="runbook-changed">'):]
    assert banner.index("The runbook file changed since this run.") < banner.index('<dl class="facts">')
    assert hashlib.sha256(runbook.read_bytes()).hexdigest() in banner.split("</div>")[0]


def test_a_missing_runbook_renders_from_the_record_only(tmp_path: Path) -> None:
    record = make_record(tmp_path / "gone.md")
    md = render(record, "md")
    assert "> **WARNING:** the runbook file cannot be read" in md
    assert "## Steps (from the record only)" in md
    assert md.index("### ship") < md.index("### check")  # execution order
    html = render(record, "html")
    assert "The runbook file is gone." in html and 'data-step="check"' in html


def test_the_projects_runbook_of_the_same_name_stands_in_for_a_moved_path(runbook: Path) -> None:
    record = make_record(runbook.parent / "elsewhere" / "demo.md")
    source = read_runbook(record, runbook.parent.parent)
    assert source.state == "same" and source.path == str(runbook) and "is gone" in source.note
    record["runbook"] = "../../etc/passwd"  # a name that is not a slug is never a path
    assert read_runbook(record, runbook.parent.parent).state == "missing"


def test_steps_the_file_no_longer_has_are_still_shown(runbook: Path) -> None:
    record = make_record(runbook)
    record["steps"]["renamed-away"] = {"name": "renamed-away", "status": "succeeded", "order": 2, "hosts": {"web1": host()}}
    md = render(record, "md")
    assert md.index("## Steps the runbook file no longer has") < md.index("### renamed-away") < md.index("## Approvals")


# -- values are data ----------------------------------------------------------------------------

EVIL = "<script>alert(1)</script></details></pre>```\n# injected\n~~~ {{ 7*7 }} \x1b[31mred\x1b[0m \x1b]8;;http://x\x07 \x07 \ud800 |pipe| *em* [l](https://evil.example/)"


def evil_record(runbook: Path) -> dict[str, Any]:
    record = make_record(runbook)
    step = record["steps"].pop("check")
    step["name"] = EVIL
    step["hosts"] = {EVIL: host("failed", 1.0, EVIL, output={"stdout": EVIL + "\n````````\nafter", "stderr": EVIL,
                                                             "msg": EVIL, "rc": 1, "bytes": 10, "sha256": "x",
                                                             "truncated": False})}
    record["steps"][EVIL] = step
    record["params"]["note"] = EVIL
    record["operator"]["user"] = EVIL
    record["approvals"][0]["user"] = EVIL
    record["notices"] = [{"level": "warning", "message": EVIL}]
    record["rollback"]["failures"] = [{"step": EVIL, "host": EVIL, "error": EVIL}]
    record["artifacts"]["other"] = [{"summary": EVIL}]
    return record


def test_markdown_keeps_hostile_values_inert(runbook: Path) -> None:
    md = render(evil_record(runbook), "md")
    md.encode("utf-8")  # the lone surrogate did not survive
    assert "\x1b" not in md and "\ufffd" in md and "\\x07" in md
    shown = viewer_html(md)
    assert "<script>" not in shown and "&lt;script&gt;" in shown  # neither the runbook's prose nor a value
    assert "evil.example" not in " ".join(re.findall(r'href="[^"]*"', shown)) and "<em>em</em>" not in shown
    tokens = MarkdownIt("commonmark").parse(md)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert "injected" not in headings  # no fence was closed early by a value
    assert {"Rollback", "Artifacts", "Audit chain"} <= set(headings)  # nor left open by the runbook's comment
    fenced = [t.content for t in tokens if t.type == "fence"]
    assert any("````````\nafter" in f for f in fenced)  # the output, whole, inside one fence
    assert "~~~ {{ 7*7 }} red" in md and "~~~ 49" not in md


def test_html_keeps_hostile_values_inert(runbook: Path) -> None:
    html = render(evil_record(runbook), "html")
    html.encode("utf-8")
    assert "\x1b" not in html and "\ud800" not in html
    page = Tags(html)
    assert page.count("script") == 0 and page.count("img") == 0 and page.count("link") == 0
    # only the page's own <details>: the runbook's front matter and no value closing or opening one
    assert page.count("details") == 1 and html.count("</details>") == 1
    assert "&lt;/details&gt;" in html and "~~~ {{ 7*7 }} red" in html and "~~~ 49" not in html
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("href", "src"):
                assert not (value or "").lower().startswith(("javascript:", "data:", "vbscript:")), (tag, value)
    # raw HTML in the runbook's prose is text; its image is a link, never a request
    assert "&lt;script&gt;alert(&#x27;prose&#x27;)&lt;/script&gt;" in html or "&lt;script&gt;alert('prose')" in html
    assert '[image: pixel]</a>' in html and 'rel="noopener noreferrer nofollow"' in html
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in (csp or "")


def test_clean_drops_colours_and_shows_other_controls() -> None:
    assert clean("\x1b[1;31mFAIL\x1b[0m done") == "FAIL done"
    assert clean("a\rb\r\nc\x00d\x07\u202eevil") == "a\nb\nc\\x00d\\x07\\u202eevil"
    assert clean("tab\tand\nnewline") == "tab\tand\nnewline"
    assert clean("\ud83d") == "\ufffd"


def test_timeline_draws_each_hosts_steps_at_their_times(runbook: Path) -> None:
    report = build(make_record(runbook), read_runbook(make_record(runbook)))
    lanes = {lane.host: lane for lane in report.timeline}
    assert set(lanes) == {"web1", "web2"}
    bars = {(b.step, b.phase): b for b in lanes["web2"].bars}
    ship, check, undo = bars[("ship", "run")], bars[("check", "run")], bars[("undo ship", "rollback")]
    assert (ship.x, ship.w) == (25.0, 20.0)  # started at 10 s of 40 s, 8 s on web2
    assert (check.x, check.w, check.css) == (50.0, 7.5, "failed")
    assert (undo.x, undo.w) == (65.0, 7.5)
    assert (ship.step_x, ship.step_w) == (25.0, 25.0)  # the step's whole span behind it
    html = render(make_record(runbook), "html")
    assert '<rect class="tl-bar s-failed" x="50.0" y="2.5" width="7.5" height="5"/>' in html
    record = make_record(runbook)  # a host's own times, when the record has them, win
    record["steps"]["ship"]["hosts"]["web2"].update(started_at=_at(12), ended_at=_at(16))
    lane = {lane.host: lane for lane in build(record, read_runbook(record)).timeline}["web2"]
    assert (lane.bars[0].x, lane.bars[0].w) == (30.0, 10.0)


# -- the API ------------------------------------------------------------------------------------


def test_api_report_errors(tmp_path: Path) -> None:
    from technician_ops import api

    (tmp_path / "runbooks").mkdir()
    project = api.open_project(tmp_path)
    with pytest.raises(NotFound):
        api.report(project, "01a2ffff")
    with pytest.raises(UsageError, match="unknown report format"):
        api.report(project, "01a2ffff", fmt="pdf")
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link.html").symlink_to(tmp_path / "target")
    with pytest.raises(UsageError, match="symbolic link"):
        api.report(project, "01a2ffff", fmt="html", out=tmp_path / "link.html")
    assert (tmp_path / "target").read_text() == "keep"


def test_a_fence_the_runbook_leaves_open_cannot_swallow_the_report(tmp_path: Path) -> None:
    text = RUNBOOK + "\nTrailing notes:\n\n````text\nnever closed\n"
    path = tmp_path / "demo.md"
    path.write_text(text)
    md = render(make_record(path, text), "md")
    tokens = MarkdownIt("commonmark").parse(md)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert {"Approvals", "Rollback", "Audit chain"} <= set(headings)
    assert any(t.type == "fence" and t.content == "never closed\n" for t in tokens)
