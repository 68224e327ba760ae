"""``technician-ops report`` of real local runs, in Markdown and in HTML, the HTML opened in Chromium.

One real run, made once for the module, is enough to show every part: release-with-healthcheck
ships a release on two hosts (two steps that succeed), its health check fails on both, and the
release is rolled back (exit 3).  Each test reports on that run.
The HTML is loaded from file:// by headless Chromium with every host name resolving to nothing and
a network log kept: the page must lay out (a screenshot at a phone's width), parse into the steps,
hosts and rollback the record holds, and ask for nothing but itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from technician_ops.api import RunRequest, report, run_command, show
from technician_ops.errors import ExitCode
from tests.conftest import REPO, DemoProject, make_demo

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoProject, str]:
    demo = make_demo(tmp_path_factory.mktemp("report"))
    failed = run_command(RunRequest("release-with-healthcheck", {"release": "r1"}), demo.project(), [])
    assert failed.exit_code == ExitCode.ROLLED_BACK
    return demo, failed.run_id


def cli(demo: DemoProject, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)


def test_markdown_report_of_a_rolled_back_run(runs: tuple[DemoProject, str]) -> None:
    demo, failed = runs
    proc = cli(demo, "report", failed[:13])  # a unique prefix is enough
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    record = show(failed, demo.project()).record or {}
    assert md.startswith("# Run report: release-with-healthcheck: ROLLED BACK\n")
    order = [md.index(s) for s in ("Each step that changes a host has an undo block", "```yaml {name=save-previous}",
                                   "**save-previous: SUCCEEDED**", "```yaml {name=ship}", "**ship: SUCCEEDED**",
                                   "```sh {name=health-check kind=check}", "**health-check: FAILED**", "## Rollback")]
    assert order == sorted(order)
    failed_step = md[md.index("**health-check: FAILED**"):md.index("## Approvals")]
    assert "| web1 | failed | no |" in failed_step and "| web2 | failed | no |" in failed_step
    assert "service unhealthy after release r1" in failed_step  # the check's stderr
    rollback = md[md.index("## Rollback"):md.index("## Artifacts")]
    assert "Undo order (newest first): ship, save-previous" in rollback
    assert rollback.index("### 1. undo ship") < rollback.index("### 2. undo save-previous")
    assert "| release | r1 |" in md and "| healthy | false |" in md
    assert f"| seq | {record['seq']} |\n| hash | {record['hash']} |\n| prev hash | {record['prev_hash']} |" in md


def test_html_report_reads_in_chromium_at_a_phones_width(runs: tuple[DemoProject, str], tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    demo, failed = runs
    out = tmp_path / "report.html"
    proc = cli(demo, "report", failed, "--format", "html", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"report written to {out}" in proc.stderr and proc.stdout == ""
    assert out.stat().st_mode & 0o777 == 0o600
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(|@import""", html, re.I)

    dom, png, requests = chromium(out, tmp_path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a page was laid out and drawn, not a blank
    assert struct.unpack(">II", png[16:24]) == (390, 2000)
    assert requests == []  # nothing but the file itself

    page = Dom(dom)
    runbook = page.section("runbook")
    assert [(s["data-step"], s["data-status"]) for s in runbook if "data-step" in s] == [
        ("save-previous", "succeeded"), ("ship", "succeeded"), ("health-check", "failed")]
    hosts = {(s["step"], s["data-host"]): s["data-status"] for s in runbook if "data-host" in s}
    assert hosts == {("save-previous", "web1"): "changed", ("save-previous", "web2"): "changed",
                     ("ship", "web1"): "changed", ("ship", "web2"): "changed",
                     ("health-check", "web1"): "failed", ("health-check", "web2"): "failed"}
    web1 = page.text_of("health-check", "web1")
    assert "service unhealthy after release r1" in web1  # the failed check's stderr, under its host
    assert [s["data-step"] for s in page.section("rollback") if "data-step" in s] == ["ship", "save-previous"]
    assert page.lanes == ["web1", "web2"]  # the timeline: a lane per host


def test_a_runbook_changed_since_the_run_is_said_at_the_top(runs: tuple[DemoProject, str]) -> None:
    demo, failed = runs
    runbook = demo.root / "runbooks" / "release-with-healthcheck.md"
    original = runbook.read_text()
    try:
        runbook.write_text(original.replace("# Release with health check", "# Release with health check (edited)"))
        md, html = report(demo.project(), failed), report(demo.project(), failed, fmt="html")
    finally:
        runbook.write_text(original)
    assert md.splitlines()[2].startswith("> **WARNING:** the runbook file changed since this run")
    assert "### Release with health check (edited)" in md and "**health-check: FAILED**" in md
    assert 'role="alert" id="runbook-changed"><strong>The runbook file changed since this run.' in html


def test_an_unknown_run_is_a_usage_error(runs: tuple[DemoProject, str]) -> None:
    demo, _ = runs
    proc = cli(demo, "report", "0000ffff")
    assert proc.returncode == ExitCode.USAGE and "error: no run '0000ffff' in the audit store" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- Chromium ------------------------------------------------------------------------------------


def chromium(page: Path, tmp: Path) -> tuple[str, bytes, list[str]]:
    """The page's DOM after load, a 390x2000 screenshot, and the URLs the page (not the browser) asked for."""
    assert CHROMIUM is not None
    shot, netlog = tmp / "phone.png", tmp / "netlog.json"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'chromium'}",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=390,2000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(tmp)})
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout, shot.read_bytes(), page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URL requests a page started: the browser's own (update checks and the like, all failing to
    resolve here) carry no initiator origin; a page's carry its own, ``null`` for a file:// page."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and "url" in e.get("params", {}) and e["params"].get("initiator") != "not an origin"]


def test_the_network_check_sees_a_page_that_asks_for_something(tmp_path: Path) -> None:
    """The control for ``requests == []`` above: the same check on a page with an image and a stylesheet."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!doctype html><html><body><img src="http://pixel.invalid/p.png">'
                     '<link rel="stylesheet" href="https://fonts.invalid/f.css"></body></html>')
    _dom, _png, requests = chromium(leaky, tmp_path)
    assert sorted(requests) == ["http://pixel.invalid/p.png", "https://fonts.invalid/f.css"]


class Dom(HTMLParser):
    """The elements of the report that carry data-* attributes, each with the step it is in."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[dict[str, Any]] = []
        self.where: list[tuple[str, str, str | None]] = []  # open elements: (tag, section/step/host, its name)
        self.texts: dict[tuple[str, str], list[str]] = {}
        self.lanes: list[str] = []
        self.feed(html)

    def _context(self, key: str) -> str | None:
        return next((v for _, k, v in reversed(self.where) if k == key), None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("meta", "br", "hr", "img", "link", "input"):  # void: never closed
            return
        if tag == "section":
            self.where.append((tag, "section", a.get("id")))
        elif "data-step" in a:
            self.where.append((tag, "step", a["data-step"]))
        elif "data-host" in a and tag == "li":
            self.where.append((tag, "host", a["data-host"]))
        else:
            self.where.append((tag, "", None))
        if tag == "figure" and "data-host" in a:
            self.lanes.append(a["data-host"])
        if "data-step" in a or ("data-host" in a and tag == "li"):
            self.items.append({**a, "section": self._context("section"), "step": self._context("step")})

    def handle_endtag(self, tag: str) -> None:
        if any(t == tag for t, _, _ in self.where):
            while self.where.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        step, host_ = self._context("step"), self._context("host")
        if step and host_:
            self.texts.setdefault((step, host_), []).append(data)

    def section(self, name: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i["section"] == name]

    def text_of(self, step: str, host_: str) -> str:
        return "".join(self.texts.get((step, host_), []))
