"""The web view (serve/web.py) on records written through the store's own API into a real SQLite store.

Every request goes through aiohttp's test client to a real server on loopback.  The attacks are
values a runbook, an operator, an alert or a host can put in a record (markup in a step, a host,
an output, a label), and requests another site can make a browser send (no token, a wrong one,
another user's, a cross-origin POST).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from technician_ops.audit import open_store
from technician_ops.audit import store as store_module
from technician_ops.errors import LockHeld
from technician_ops.events import Event, Kind
from technician_ops.serve import web as webview
from technician_ops.serve.web import AWAITING_APPROVAL, CONFIG, csrf_token, make_app
from tests.conftest import DemoProject, make_demo

SECRET = b"k" * 32
NOBODY = "0190c2d4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"  # well formed, never recorded
XSS = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'


# -- records --------------------------------------------------------------------------------------

_clock = [1_767_261_600.0]  # 2026-01-01T10:00:00Z, then one minute later for each run


def _next_start() -> float:
    _clock[0] += 60
    return _clock[0]


def write_run(demo: DemoProject, runbook: str = "deploy", outcome: str = "succeeded", *,
              steps: dict[str, dict[str, dict[str, Any]]] | None = None, origin: dict[str, Any] | None = None,
              user: str = "alice", path: str | None = None, undo: dict[str, dict[str, dict[str, Any]]] | None = None,
              finish: bool = True) -> str:
    """A run recorded as the engine records one: header, step and host events, then the seal.

    ``steps``: {step: {host: host_result fields}}; ``undo``: the same for a rollback.
    """
    from technician_ops.audit import new_run_id

    run_id = new_run_id()
    t0 = _next_start()
    store = open_store(None, demo.root)
    try:
        store.start_run({"run_id": run_id, "runbook": runbook, "path": path or str(demo.root / "runbooks" / f"{runbook}.md"),
                         "started_at": t0, "check": False, "params": {"release": "r1"},
                         "operator": {"user": user, "host": "laptop", "pid": 42},
                         "origin": origin or {"type": "terminal", "system": None, "run_id": None, "url": None}})
        events: list[Event] = []
        t = t0
        for phase, plan in (("run", steps or {}), ("rollback", undo or {})):
            if phase == "rollback" and plan:
                events.append(Event(Kind.ROLLBACK_START, {"steps": list(plan)}, t))
            for name, hosts in plan.items():
                t += 1
                events.append(Event(Kind.STEP_START, {"step": name, "kind": "shell", "hosts": "web", "phase": phase}, t))
                for host, result in hosts.items():
                    data = {"step": name, "host": host, "status": "ok", "changed": False, "duration": 0.5,
                            "error": None, "phase": phase, **result}
                    events.append(Event(Kind.HOST_RESULT, data, t + 0.5))
                failed = any(r.get("status") == "failed" for r in hosts.values())
                events.append(Event(Kind.STEP_END, {"step": name, "status": "failed" if failed else "succeeded",
                                                    "duration": 1.0, "phase": phase,
                                                    "hosts": {h: r.get("status", "ok") for h, r in hosts.items()}}, t + 1))
            if phase == "rollback" and plan:
                events.append(Event(Kind.ROLLBACK_END, {"outcome": "rolled_back", "failures": []}, t + 1))
        if events:
            store.append_many(run_id, events)
        if finish:
            store.finish(run_id, outcome, store_module.iso_utc(t + 2))
    finally:
        store.close()
    return run_id


def output(stdout: str = "", stderr: str = "", rc: int = 0, msg: str | None = None) -> dict[str, Any]:
    text = stdout + stderr
    return {"stdout": stdout, "stderr": stderr, "msg": msg, "rc": rc, "bytes": len(text.encode()),
            "sha256": "ab" * 32, "truncated": False}


@pytest.fixture
def demo(tmp_path: Path) -> DemoProject:
    return make_demo(tmp_path)


@pytest.fixture
def awaiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the store seal ``awaiting_approval`` (the outcome the approval work adds; harmless once it has)."""
    monkeypatch.setattr(store_module, "FINAL_OUTCOMES", store_module.FINAL_OUTCOMES | {AWAITING_APPROVAL})


# -- talking to the app ---------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: Any, text: str) -> None:
        self.status, self.headers, self.text = status, headers, text

    @property
    def page(self) -> Page:
        return Page(self.text)


def serve(app: web.Application, scenario: Callable[[TestClient[Any, Any]], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


async def fetch(client: TestClient[Any, Any], method: str, path: str, **kwargs: Any) -> Answer:
    async with client.request(method, path, allow_redirects=False, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.text())


def get(app: web.Application, path: str) -> Answer:
    return serve(app, lambda client: fetch(client, "GET", path))  # type: ignore[no-any-return]


def app_for(demo: DemoProject, **kwargs: Any) -> web.Application:
    kwargs.setdefault("approve", None)
    return make_app(demo.project(), csrf_secret=SECRET, **kwargs)


class Page(HTMLParser):
    """What a browser's parser makes of a page: its start tags, its text, the history rows and the grid."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text_parts: list[str] = []
        self.in_style = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self.in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if not self.in_style:
            self.text_parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def rows(self) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == "tr" and "data-run-id" in a]

    def links(self) -> list[str]:
        return [a["href"] for t, a in self.tags if t == "a" and "href" in a]

    def cells(self) -> list[tuple[str, str]]:
        """(host, status) of the steps × hosts grid, in order."""
        return [(a["data-host"], a["data-status"]) for t, a in self.tags if t == "td" and "data-host" in a]

    def form(self) -> dict[str, str] | None:
        forms = [a for t, a in self.tags if t == "form" and a.get("method") == "post"]
        if not forms:
            return None
        token = next((a["value"] for t, a in self.tags if t == "input" and a.get("name") == "csrf"), "")
        return {"action": forms[0]["action"], "csrf": token}


# -- the history ----------------------------------------------------------------------------------


def test_history_is_newest_first_and_links_each_run(demo: DemoProject) -> None:
    first = write_run(demo, "deploy", "succeeded")
    second = write_run(demo, "release", "rolled_back", origin={"type": "cron"})
    answer = get(app_for(demo), "/")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    rows = answer.page.rows()
    assert [(r["data-run-id"], r["data-runbook"], r["data-outcome"], r["data-origin"]) for r in rows] == [
        (second, "release", "rolled_back", "cron"), (first, "deploy", "succeeded", "terminal")]
    assert f"/runs/{first}" in answer.page.links() and f"/runs/{second}" in answer.page.links()
    assert ("p", {"id": "chain", "class": "chain", "data-state": "ok"}) in answer.page.tags
    assert "audit chain intact: 2 records" in answer.page.text


def test_history_filters(demo: DemoProject) -> None:
    a = write_run(demo, "deploy", "succeeded")
    b = write_run(demo, "deploy", "failed", origin={"type": "cron"})
    c = write_run(demo, "release", "failed", origin={"type": "alert", "labels": {"alertname": "DiskFull"}})
    app = app_for(demo)

    async def scenario(client: TestClient[Any, Any]) -> dict[str, list[str]]:
        out = {}
        for query in ("runbook=deploy", "outcome=failed", "origin=cron", "origin=alert&outcome=failed",
                      "runbook=deploy&outcome=failed", "since=2000-01-01", "since=2999-01-01", "since=1h",
                      "outcome=interrupted"):
            answer = await fetch(client, "GET", "/?" + query)
            assert answer.status == 200, (query, answer.text)
            out[query] = [r["data-run-id"] for r in answer.page.rows()]
        return out

    seen = serve(app, scenario)
    assert seen["runbook=deploy"] == [b, a]
    assert seen["outcome=failed"] == [c, b]
    assert seen["origin=cron"] == [b]
    assert seen["origin=alert&outcome=failed"] == [c]
    assert seen["runbook=deploy&outcome=failed"] == [b]
    assert seen["since=2000-01-01"] == [c, b, a]
    assert seen["since=2999-01-01"] == []
    assert seen["since=1h"] == []  # the crafted runs started in 2026-01-01
    assert seen["outcome=interrupted"] == []


def test_history_pages_by_limit(demo: DemoProject) -> None:
    ids = [write_run(demo, "deploy") for _ in range(5)][::-1]  # newest first
    app = app_for(demo)

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await fetch(client, "GET", q) for q in ("/?limit=20", "/?limit=2", "/?limit=2&offset=2",
                                                          "/?limit=2&offset=4")]

    whole, one, two, three = serve(app, scenario)
    assert [r["data-run-id"] for r in whole.page.rows()] == ids
    assert [r["data-run-id"] for r in one.page.rows()] == ids[:2]
    assert "/?limit=2&offset=2" in one.page.links() and not any("rel" in a and a["rel"] == "prev" for _, a in one.page.tags)
    assert [r["data-run-id"] for r in two.page.rows()] == ids[2:4]
    assert "/?limit=2" in two.page.links() and "/?limit=2&offset=4" in two.page.links()
    assert [r["data-run-id"] for r in three.page.rows()] == ids[4:]
    assert not any(a.get("rel") == "next" for _, a in three.page.tags)


@pytest.mark.parametrize("query", ["runbook=%3Cscript%3E", "outcome=nope", "outcome=Rolled%20Back", "origin=a%2Fb",
                                   "since=yesterday", "since=2026-13-40", "limit=0", "limit=100000", "limit=x",
                                   "offset=-1", "offset=99999999"])
def test_a_malformed_filter_is_a_400_page(demo: DemoProject, query: str) -> None:
    answer = get(app_for(demo), "/?" + query)
    assert answer.status == 400
    assert "<script>" not in answer.text and answer.headers["Content-Security-Policy"] == webview.CSP


def test_awaiting_approval_is_an_outcome_to_filter_by(demo: DemoProject, awaiting: None) -> None:
    write_run(demo, "deploy", "succeeded")
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    answer = get(app_for(demo), "/?outcome=awaiting_approval")
    assert [r["data-run-id"] for r in answer.page.rows()] == [waiting]
    assert any(t == "option" and a.get("value") == AWAITING_APPROVAL for t, a in answer.page.tags)


def test_the_chain_badge_is_cached_and_says_when_the_chain_breaks(demo: DemoProject,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(demo, "deploy")
    victim = write_run(demo, "deploy")
    app = app_for(demo)
    calls = []
    real = webview._verify

    def counting(project: Any) -> webview.ChainBadge:
        calls.append(1)
        return real(project)

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        answers = [await fetch(client, "GET", "/"), await fetch(client, "GET", "/")]
        db = sqlite3.connect(demo.root / ".technician-ops" / "audit.db")
        with db:
            db.execute("UPDATE runs SET record = replace(record, '\"alice\"', '\"mallory\"') WHERE run_id = ?", (victim,))
        db.close()
        answers.append(await fetch(client, "GET", "/"))  # still the cached walk
        app[CONFIG].chain.ttl = 0
        answers.append(await fetch(client, "GET", "/"))
        return answers

    monkeypatch.setattr(webview, "_verify", counting)
    first, second, cached, fresh = serve(app, scenario)
    assert len(calls) == 2
    for answer in (first, second, cached):
        assert ("p", {"id": "chain", "class": "chain", "data-state": "ok"}) in answer.page.tags
    assert ("p", {"id": "chain", "class": "chain", "data-state": "bad"}) in fresh.page.tags
    assert "chain NOT intact" in fresh.page.text and f"(run {victim})" in fresh.page.text


# -- the run page ---------------------------------------------------------------------------------


def test_run_page_shows_steps_hosts_outputs_and_rollback(demo: DemoProject) -> None:
    run_id = write_run(demo, "release", "rolled_back", steps={
        "ship": {"web1": {"status": "changed", "changed": True, "output": output("shipped r1\n")},
                 "web2": {"status": "changed", "changed": True}},
        "health-check": {"web1": {"status": "failed", "error": "health-check: rc=1",
                                  "output": output(stderr="service unhealthy after release r1\n", rc=1)},
                         "web2": {"status": "ok"}}},
        undo={"ship": {"web1": {"status": "changed", "changed": True}, "web2": {"status": "changed", "changed": True}}})
    answer = get(app_for(demo), f"/runs/{run_id}")
    assert answer.status == 200
    page = answer.page
    grid = [(a["data-step"], a["data-status"]) for t, a in page.tags if t == "tr" and "data-step" in a]
    assert grid == [("ship", "succeeded"), ("health-check", "failed"), ("ship", "succeeded")]  # run, then undo
    assert page.cells()[:4] == [("web1", "changed"), ("web2", "changed"), ("web1", "failed"), ("web2", "ok")]
    assert "shipped r1" in page.text and "service unhealthy after release r1" in page.text
    assert "Undo order (newest first)" in page.text
    assert f"/runs/{run_id}/report" in page.links()
    assert page.form() is None  # not awaiting approval


def test_alert_origin_labels_and_fingerprint_are_shown(demo: DemoProject) -> None:
    origin = {"type": "alert", "system": "alertmanager", "run_id": None, "url": "https://am.example/#/alerts?x=1",
              "fingerprint": "3f2a9c1d0b7e4a21", "labels": {"alertname": "DiskFull", "instance": "web1:9100"},
              "annotations": {"summary": "disk / is 95% full"}}
    run_id = write_run(demo, "disk-cleanup", origin=origin)
    page = get(app_for(demo), f"/runs/{run_id}").page
    assert "origin fingerprint" in page.text and "3f2a9c1d0b7e4a21" in page.text
    labels = next(a for t, a in page.tags if t == "table" and a.get("class") == "origin-labels")
    assert labels["aria-label"] == "origin labels"
    for text in ("alertname", "DiskFull", "instance", "web1:9100", "disk / is 95% full"):
        assert text in page.text
    link = next(a for t, a in page.tags if t == "a" and a.get("href", "").startswith("https://am.example"))
    assert link["rel"] == "noopener noreferrer nofollow"


def test_hostile_values_stay_text_everywhere(demo: DemoProject) -> None:
    hostile = {f"{XSS}step": {IMG: {"status": "failed", "error": f"</pre>{XSS}",
                                    "output": output(stdout=f"</pre></details>{XSS}\n", stderr=IMG, msg=XSS)}}}
    origin = {"type": "alert", "url": "javascript:alert(1)", "fingerprint": XSS, "labels": {XSS: IMG}}
    run_id = write_run(demo, f"<b>rb</b>{XSS}", "failed", steps=hostile, origin=origin, user=IMG)
    app = app_for(demo)

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await fetch(client, "GET", p) for p in ("/", f"/runs/{run_id}", f"/runs/{run_id}/report")]

    answers = serve(app, scenario)
    for answer in answers:
        assert answer.status == 200
        tags = {t for t, _ in answer.page.tags}
        assert not tags & {"script", "img", "iframe", "object", "embed", "b"}, tags
        assert not [k for _, a in answer.page.tags for k in a if k.startswith("on")]
        assert not [a for _, a in answer.page.tags if "javascript:" in a.get("href", "").lower()]
        assert XSS in answer.page.text  # shown, as text
    run_page = answers[1]
    assert run_page.page.cells() == [(IMG, "failed")]
    assert f"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;step" in run_page.text


def test_security_headers_on_every_answer(demo: DemoProject) -> None:
    run_id = write_run(demo)
    app = app_for(demo)

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await fetch(client, m, p) for m, p in (("GET", "/"), ("GET", f"/runs/{run_id}"),
                                                       ("GET", f"/runs/{run_id}/report"), ("GET", "/runs/nope"),
                                                       ("GET", f"/runs/{NOBODY}"), ("DELETE", "/"), ("GET", "/nowhere"))]

    for answer in serve(app, scenario):
        assert answer.headers["Content-Security-Policy"] == webview.CSP
        assert webview.CSP.startswith("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'")
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert "<script" not in answer.text.lower() and "http://" not in answer.text and "https://" not in answer.text


@pytest.mark.parametrize("path, status", [
    ("/runs/abc", 400), ("/runs/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", 400),
    ("/runs/0190C2D4-5E6F-7A8B-9C0D-1E2F3A4B5C6D", 400), ("/runs/0190c2d4", 400),  # no prefixes, no upper case
    ("/runs/0190c2d4-5e6f-7a8b-9c0d-1e2f3a4b5c6d%00", 400), ("/runs/abc/report", 400),
    (f"/runs/{NOBODY}", 404), (f"/runs/{NOBODY}/report", 404), ("/runs/../../etc/passwd", 404), ("/static/x", 404),
])
def test_bad_and_unknown_run_ids(demo: DemoProject, path: str, status: int) -> None:
    write_run(demo)
    answer = get(app_for(demo), path)
    assert answer.status == status, answer.text
    assert ("div", {"class": "banner", "role": "alert", "id": "problem"}) in answer.page.tags


@pytest.mark.parametrize("method, path", [("POST", "/"), ("PUT", "/runs/{id}"), ("DELETE", "/runs/{id}"),
                                          ("POST", "/runs/{id}"), ("PATCH", "/runs/{id}/report"),
                                          ("GET", "/runs/{id}/approve"), ("PUT", "/runs/{id}/approve")])
def test_everything_but_approve_is_get_only(demo: DemoProject, method: str, path: str) -> None:
    run_id = write_run(demo)
    answer = serve(app_for(demo), lambda c: fetch(c, method, path.format(id=run_id)))
    assert answer.status == 405 and answer.headers["Allow"]
    assert answer.headers["Content-Security-Policy"] == webview.CSP


def test_a_running_run_is_folded_live_and_reloads(demo: DemoProject) -> None:
    run_id = write_run(demo, steps={"ship": {"web1": {"status": "changed", "changed": True}}}, finish=False)
    answer = get(app_for(demo), f"/runs/{run_id}")
    assert answer.status == 200 and "Still running" in answer.page.text
    assert ("meta", {"http-equiv": "refresh", "content": "10"}) in answer.page.tags
    assert answer.page.cells() == [("web1", "changed")]


def test_the_report_reads_a_runbook_only_from_inside_the_project(demo: DemoProject, tmp_path: Path) -> None:
    inside = write_run(demo, "release-with-healthcheck", "succeeded",
                       path=str(demo.root / "runbooks" / "release-with-healthcheck.md"))
    outside_file = tmp_path / "elsewhere.md"
    outside_file.write_text("---\nname: private\n---\n\nTOP SECRET prose\n")
    outside = write_run(demo, "private", "succeeded", path=str(outside_file))
    app = app_for(demo)

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await fetch(client, "GET", f"/runs/{r}/report") for r in (inside, outside)]

    good, refused = serve(app, scenario)
    assert good.status == 200 and "Runbook, step by step" in good.page.text
    assert refused.status == 200 and "TOP SECRET" not in refused.text
    assert "this report is built from the record only" in refused.page.text


def test_make_app_wants_a_real_secret(demo: DemoProject) -> None:
    with pytest.raises(ValueError):
        make_app(demo.project(), approve=None, csrf_secret=b"short")
    with pytest.raises(ValueError):
        make_app(demo.project(), approve=None, csrf_secret="a string, not bytes" * 4)  # type: ignore[arg-type]


# -- approve ------------------------------------------------------------------------------------


class Approver:
    def __init__(self, answer: str | Exception = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.answer = answer

    def __call__(self, run_id: str, user: str) -> str:
        self.calls.append((run_id, user))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def signed_in(name: str | None) -> Callable[[web.Request], str | None]:
    return lambda request: name


def origin_of(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("/")).rstrip("/")


async def approve_with(client: TestClient[Any, Any], run_id: str, token: str | None, **headers: str) -> Answer:
    data = {} if token is None else {"csrf": token}
    headers.setdefault("Origin", origin_of(client))
    headers = {k: v for k, v in headers.items() if v}
    return await fetch(client, "POST", f"/runs/{run_id}/approve", data=data, headers=headers)


def test_approve_form_and_flow(demo: DemoProject, awaiting: None) -> None:
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    continued = write_run(demo, "restart", "succeeded")
    approver = Approver(continued)
    app = app_for(demo, approve=approver, auth=signed_in("alice"))

    async def scenario(client: TestClient[Any, Any]) -> tuple[Answer, Answer]:
        page = await fetch(client, "GET", f"/runs/{waiting}")
        form = page.page.form()
        assert form is not None
        return page, await approve_with(client, waiting, form["csrf"])

    page, done = serve(app, scenario)
    form = page.page.form()
    assert form == {"action": f"/runs/{waiting}/approve", "csrf": csrf_token(SECRET, "alice", waiting)}
    assert "Approve as alice" in page.page.text
    assert done.status == 303 and done.headers["Location"] == f"/runs/{continued}"
    assert approver.calls == [(waiting, "alice")]


def test_no_approve_button_without_auth_and_the_post_is_refused(demo: DemoProject, awaiting: None) -> None:
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    approver = Approver(NOBODY)
    token = csrf_token(SECRET, "alice", waiting)
    for app, says in ((app_for(demo, approve=approver), "read-only"),  # no auth at all
                      (app_for(demo, approve=None, auth=signed_in("alice")), "read-only"),  # nothing to approve with
                      (app_for(demo, approve=approver, auth=signed_in(None)), "Sign in")):  # not signed in

        async def scenario(client: TestClient[Any, Any]) -> tuple[Answer, Answer]:
            return await fetch(client, "GET", f"/runs/{waiting}"), await approve_with(client, waiting, token)

        page, post = serve(app, scenario)
        assert page.status == 200 and page.page.form() is None and says in page.page.text
        assert "Waiting for approval" in page.page.text
        assert post.status == 403
    assert approver.calls == []


@pytest.mark.parametrize("case", ["no token", "wrong token", "another run's token", "another user's token",
                                  "cross-origin", "cross-origin referer", "null origin", "no origin nor referer",
                                  "not a form"])
def test_approve_refuses_a_forged_request(demo: DemoProject, awaiting: None, case: str) -> None:
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    other = write_run(demo, "restart", AWAITING_APPROVAL)
    approver = Approver(NOBODY)
    app = app_for(demo, approve=approver, auth=signed_in("alice"))
    good = csrf_token(SECRET, "alice", waiting)

    async def scenario(client: TestClient[Any, Any]) -> Answer:
        if case == "no token":
            return await approve_with(client, waiting, None)
        if case == "wrong token":
            return await approve_with(client, waiting, good[:-1] + ("0" if good[-1] != "0" else "1"))
        if case == "another run's token":
            return await approve_with(client, waiting, csrf_token(SECRET, "alice", other))
        if case == "another user's token":
            return await approve_with(client, waiting, csrf_token(SECRET, "bob", waiting))
        if case == "cross-origin":
            return await approve_with(client, waiting, good, Origin="https://evil.example")
        if case == "cross-origin referer":
            return await approve_with(client, waiting, good, Origin="", Referer="https://evil.example/x")
        if case == "null origin":
            return await approve_with(client, waiting, good, Origin="null")
        if case == "no origin nor referer":
            return await approve_with(client, waiting, good, Origin="")
        return await fetch(client, "POST", f"/runs/{waiting}/approve", json={"csrf": good},
                           headers={"Origin": origin_of(client)})

    answer = serve(app, scenario)
    assert answer.status == (415 if case == "not a form" else 403), answer.text
    assert approver.calls == []


def test_a_same_origin_referer_stands_in_for_a_missing_origin(demo: DemoProject, awaiting: None) -> None:
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    approver = Approver(waiting)
    app = app_for(demo, approve=approver, auth=signed_in("alice"))
    answer = serve(app, lambda c: approve_with(c, waiting, csrf_token(SECRET, "alice", waiting), Origin="",
                                               Referer=origin_of(c) + f"/runs/{waiting}"))
    assert answer.status == 303 and approver.calls == [(waiting, "alice")]


def test_approve_refused_by_the_engine_or_for_a_run_not_waiting(demo: DemoProject, awaiting: None) -> None:
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    done = write_run(demo, "restart", "succeeded")
    approver = Approver(LockHeld(f"runbook restart is locked by {XSS}", hint="retry later"))
    app = app_for(demo, approve=approver, auth=signed_in("alice"))

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await approve_with(client, waiting, csrf_token(SECRET, "alice", waiting)),
                await approve_with(client, done, csrf_token(SECRET, "alice", done)),
                await approve_with(client, NOBODY, csrf_token(SECRET, "alice", NOBODY))]

    refused, not_waiting, unknown = serve(app, scenario)
    assert refused.status == 409 and "runbook restart is locked by " + XSS in refused.page.text
    assert "retry later" in refused.page.text and "script" not in {t for t, _ in refused.page.tags}
    assert not_waiting.status == 409 and "not awaiting approval" in not_waiting.page.text
    assert unknown.status == 404
    assert approver.calls == [(waiting, "alice")]


def test_mounted_under_a_prefix_every_link_keeps_it(demo: DemoProject, awaiting: None) -> None:
    waiting = write_run(demo, "restart", AWAITING_APPROVAL)
    sub = app_for(demo, approve=Approver(waiting), auth=signed_in("alice"))
    root = web.Application()
    root.add_subapp("/ui", sub)

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        history = await fetch(client, "GET", "/ui/?limit=1")
        run = await fetch(client, "GET", f"/ui/runs/{waiting}")
        form = run.page.form()
        assert form is not None
        posted = await fetch(client, "POST", form["action"], data={"csrf": form["csrf"]},
                             headers={"Origin": origin_of(client)})
        return [history, run, posted, await fetch(client, "DELETE", f"/ui/runs/{waiting}")]

    history, run, posted, refused = serve(root, scenario)
    assert f"/ui/runs/{waiting}" in history.page.links() and "/ui/" in history.page.links()
    assert run.page.form() == {"action": f"/ui/runs/{waiting}/approve", "csrf": csrf_token(SECRET, "alice", waiting)}
    assert f"/ui/runs/{waiting}/report" in run.page.links()
    assert posted.status == 303 and posted.headers["Location"] == f"/ui/runs/{waiting}"
    assert refused.status == 405 and refused.headers["X-Frame-Options"] == "DENY"


def test_store_work_runs_off_the_event_loop(demo: DemoProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow store (a big chain to verify) must not stall other requests: two pages at once take
    about as long as one."""
    write_run(demo)
    real = webview.history_rows

    def slow(*args: Any) -> Any:
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(webview, "history_rows", slow)
    app = app_for(demo)

    async def scenario(client: TestClient[Any, Any]) -> float:
        await fetch(client, "GET", "/")  # the chain badge walked once
        began = time.monotonic()
        answers = await asyncio.gather(fetch(client, "GET", "/"), fetch(client, "GET", "/"))
        assert [a.status for a in answers] == [200, 200]
        return time.monotonic() - began

    assert serve(app, scenario) < 0.9
