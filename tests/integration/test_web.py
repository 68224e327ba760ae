"""The web view over real local runs, served on a loopback port and opened in headless Chromium.

Two real runs, made once for the module: release-with-healthcheck with a failing health check
(rolled back, exit 3) and the same runbook healthy (succeeded).  The app runs in a thread of its
own (AppRunner + TCPSite on 127.0.0.1, port 0) like the webhook server will run it; Chromium loads
the history and a run page at a desktop and a phone width, with every host name resolving to
nothing but the server's address and a network log kept: the pages must lay out, hold the runs,
steps, hosts, statuses and output the records hold, and ask for nothing at all.
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web

from technician_ops.api import RunRequest, run_command
from technician_ops.errors import ExitCode
from technician_ops.serve.web import make_app
from tests.conftest import DemoProject, make_demo
from tests.integration.test_report import CHROMIUM, page_requests

pytestmark = pytest.mark.integration


@dataclass
class Runs:
    demo: DemoProject
    rolled_back: str
    succeeded: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    demo = make_demo(tmp_path_factory.mktemp("web"))
    failed = run_command(RunRequest("release-with-healthcheck", {"release": "r1"}), demo.project(), [])
    assert failed.exit_code == ExitCode.ROLLED_BACK
    ok = run_command(RunRequest("release-with-healthcheck", {"release": "r2", "healthy": "true"}), demo.project(), [])
    assert ok.exit_code == ExitCode.OK
    return Runs(demo, failed.run_id, ok.run_id)


class Server:
    """An aiohttp app on 127.0.0.1:<free port>, its event loop in a thread."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.thread = threading.Thread(target=self.loop.run_forever, name="web-view", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(runs: Runs) -> Iterator[Server]:
    app = make_app(runs.demo.project(), approve=None, csrf_secret=os.urandom(32))
    served = Server(app)
    try:
        yield served
    finally:
        served.close()


def chromium(url: str, tmp: Path, name: str, width: int, height: int) -> tuple[str, bytes, list[str]]:
    """The page's DOM after load, a screenshot, and every URL the page asked for."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    shot, netlog = tmp / f"{name}-{width}.png", tmp / f"{name}-{width}.netlog.json"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'chromium'}",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--log-net-log={netlog}", "--hide-scrollbars",
         f"--screenshot={shot}", f"--window-size={width},{height}", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(tmp)})
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout, shot.read_bytes(), page_requests(netlog)


class Dom(HTMLParser):
    """Start tags with their attributes, and the text of the page's body."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.parts: list[str] = []
        self.skip = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self.skip = tag in ("style", "title")

    def handle_endtag(self, tag: str) -> None:
        self.skip = False

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def having(self, tag: str, attr: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and attr in a]


def check_png(png: bytes, width: int, height: int) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # laid out and drawn, not a blank
    assert struct.unpack(">II", png[16:24]) == (width, height)


def nothing_asked(requests: list[str]) -> None:
    """The page asked for nothing, not even on its own server: no style sheet, font, image or favicon.
    (The navigation itself, like the browser's own background requests, has no initiator.)"""
    assert requests == []


@pytest.mark.parametrize("width, height", [(390, 1200), (1280, 900)])
def test_history_in_chromium(runs: Runs, server: Server, tmp_path: Path, width: int, height: int) -> None:
    html, png, requests = chromium(server.base + "/", tmp_path, "history", width, height)
    check_png(png, width, height)
    nothing_asked(requests)
    dom = Dom(html)
    rows = [(r["data-run-id"], r["data-runbook"], r["data-outcome"]) for r in dom.having("tr", "data-run-id")]
    assert rows == [(runs.succeeded, "release-with-healthcheck", "succeeded"),
                    (runs.rolled_back, "release-with-healthcheck", "rolled_back")]
    assert {"id": "chain", "class": "chain", "data-state": "ok"} in dom.having("p", "data-state")
    assert "audit chain intact: 2 records" in dom.text
    links = [a["href"] for a in dom.having("a", "href")]
    assert f"/runs/{runs.rolled_back}" in links and f"/runs/{runs.succeeded}" in links
    assert not dom.having("script", "src") and not dom.having("link", "href") and not dom.having("img", "src")


@pytest.mark.parametrize("width, height", [(390, 1600), (1280, 1600)])
def test_a_rolled_back_run_in_chromium(runs: Runs, server: Server, tmp_path: Path, width: int, height: int) -> None:
    html, png, requests = chromium(f"{server.base}/runs/{runs.rolled_back}", tmp_path, "run", width, height)
    check_png(png, width, height)
    nothing_asked(requests)
    dom = Dom(html)
    assert [(r["data-step"], r["data-status"]) for r in dom.having("tr", "data-step")] == [
        ("save-previous", "succeeded"), ("ship", "succeeded"), ("health-check", "failed"),  # the run
        ("ship", "succeeded"), ("save-previous", "succeeded")]  # the rollback, newest first
    cells = [(c["data-host"], c["data-status"]) for c in dom.having("td", "data-host")]
    assert cells == [("web1", "changed"), ("web2", "changed")] * 2 + [("web1", "failed"), ("web2", "failed")] + [
        ("web1", "changed"), ("web2", "changed")] * 2
    cards = [(a["data-step"], a["data-phase"], a["data-status"]) for a in dom.having("article", "data-step")]
    assert cards == [("save-previous", "run", "succeeded"), ("ship", "run", "succeeded"), ("health-check", "run", "failed"),
                     ("ship", "rollback", "succeeded"), ("save-previous", "rollback", "succeeded")]
    hosts = [(a["data-host"], a["data-status"]) for a in dom.having("li", "data-host")]
    assert hosts.count(("web1", "failed")) == 1 and hosts.count(("web2", "failed")) == 1
    assert dom.text.count("service unhealthy after release r1") >= 2  # the failed check's stderr, on each host
    assert "Undo order (newest first)" in dom.text and "rolled back" in dom.text
    assert not dom.having("form", "method")  # nothing to approve: no form at all
    assert f"/runs/{runs.rolled_back}/report" in [a["href"] for a in dom.having("a", "href")]


def test_a_succeeded_run_and_its_full_report_in_chromium(runs: Runs, server: Server, tmp_path: Path) -> None:
    html, png, requests = chromium(f"{server.base}/runs/{runs.succeeded}", tmp_path, "ok", 390, 1200)
    check_png(png, 390, 1200)
    nothing_asked(requests)
    dom = Dom(html)
    assert [(r["data-step"], r["data-status"]) for r in dom.having("tr", "data-step")] == [
        ("save-previous", "succeeded"), ("ship", "succeeded"), ("health-check", "succeeded")]
    assert "No rollback ran." in dom.text
    html, png, requests = chromium(f"{server.base}/runs/{runs.succeeded}/report", tmp_path, "report", 390, 1200)
    check_png(png, 390, 1200)
    nothing_asked(requests)
    report = Dom(html)
    assert "Runbook, step by step" in report.text  # the runbook's text, read from inside the project
    assert [a["data-step"] for a in report.having("article", "data-step")] == ["save-previous", "ship", "health-check"]


def test_the_network_check_sees_a_page_that_asks_elsewhere(tmp_path: Path) -> None:
    """The control for ``nothing_asked``: a page with an image and a stylesheet elsewhere is caught."""
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!doctype html><html><body><img src="http://pixel.invalid/p.png">'
                     '<link rel="stylesheet" href="https://fonts.invalid/f.css"></body></html>')
    _dom, _png, requests = chromium(leaky.as_uri(), tmp_path, "leaky", 390, 400)
    with pytest.raises(AssertionError):
        nothing_asked(requests)
    assert sorted(requests) == ["http://pixel.invalid/p.png", "https://fonts.invalid/f.css"]
