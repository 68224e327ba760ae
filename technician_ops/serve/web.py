"""The web view of the audit store (issue 21): run history, one page per run, and Approve.

``make_app`` returns an aiohttp sub-application: the webhook server mounts it (``add_subapp``) and
one process serves both; on its own it is a complete app (``web.run_app(make_app(...))``).  Why
aiohttp: that server is aiohttp.web, so this is a sub-application of the same kind, with no second
framework or thread model.  Why jinja2: the HTML run report is already built with it (autoescape
on); its step cards (``outputs/templates/report_cards.html.j2``) are reused here as they are, and
the full report is served beside the run page.

Read-only but for one action.  Every page is a GET that only reads the store (through ``api.py``:
``history``, ``show``, ``audit_verify``); the one write is ``POST /runs/{id}/approve``, offered only
on a run whose outcome is ``awaiting_approval``, only to a user ``auth`` names, and only with the
form's CSRF token (an HMAC of the user and the run id) from a same-origin page.  Any other method
is a 405.

Everything shown came from a runbook, an operator, an alert or a host, and is data: strings are
cleaned (``outputs.report.clean``: control and bidi characters made visible), templates are
autoescaped, pages have no script at all, and the Content-Security-Policy lets them load nothing
but their own inline style.  A run id in a URL is checked against the UUID form before the store
is asked (400), an unknown one is a 404; no URL names a file.

The store is SQLite or PostgreSQL, opened per request by ``api.py``: that blocking work runs in the
loop's default executor, never on the event loop.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from aiohttp import web
from yarl import URL

from technician_ops.errors import NotFound, TechnicianOpsError
from technician_ops.outcomes import Outcome
from technician_ops.project import Project

__all__ = ["AWAITING_APPROVAL", "CSP", "make_app"]

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_TEMPLATES = Path(__file__).resolve().parent.parent / "outputs" / "templates"

AWAITING_APPROVAL = "awaiting_approval"  # the outcome of a run stopped at an approve step (issue 21)
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin: the approve form's POST carries our own Origin and Referer, other sites get none.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",  # records change while a run goes, and name hosts and operators
}

RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RUNBOOK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
WORD = re.compile(r"[a-z][a-z0-9_-]{0,39}")  # an outcome or an origin type
DEFAULT_LIMIT = 50
LIMITS = (20, 50, 100, 200, 500)
MAX_OFFSET = 10_000
SCAN = 10_000  # rows read when a filter the store cannot apply (origin) is filtered here
CHAIN_TTL = 60.0  # seconds a verify result is shown before the chain is walked again
MAX_FORM_BYTES = 4096

Approve = Callable[[str, str], str]
Auth = Callable[[web.Request], "str | None"]
T = TypeVar("T")


class Problem(Exception):
    """A request this view refuses, shown as an error page with ``status``."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


# -- the audit-chain badge ----------------------------------------------------------------------


@dataclass
class ChainBadge:
    state: str  # ok, bad, unknown
    text: str
    checked_at: str


class ChainStatus:
    """``audit verify``, cached: it walks the whole chain, so it runs at most once per ``ttl``.

    Refreshed in an executor thread under a lock, so concurrent page loads wait for one walk.
    """

    def __init__(self, ttl: float = CHAIN_TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._badge: ChainBadge | None = None
        self._at = 0.0

    def get(self, project: Project) -> ChainBadge:
        with self._lock:
            if self._badge is None or time.monotonic() - self._at >= self.ttl:
                self._badge = _verify(project)
                self._at = time.monotonic()
            return self._badge


def _verify(project: Project) -> ChainBadge:
    from technician_ops.api import audit_verify
    from technician_ops.errors import AuditTampered
    from technician_ops.outputs.report import clean

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        result = audit_verify(project)
    except AuditTampered as exc:
        return ChainBadge("bad", clean(exc.message), now)
    except TechnicianOpsError as exc:
        return ChainBadge("unknown", "cannot check the audit chain: " + clean(exc.message), now)
    return ChainBadge("ok", f"audit chain intact: {result.checked} record{'s' if result.checked != 1 else ''}", now)


# -- the app ------------------------------------------------------------------------------------


@dataclass
class _Config:
    project: Project
    approve: Approve | None
    secret: bytes
    auth: Auth | None
    chain: ChainStatus = field(default_factory=ChainStatus)


CONFIG = web.AppKey("technician_ops.web", _Config)


def make_app(project: Project, *, approve: Approve | None, csrf_secret: bytes,
             auth: Auth | None = None) -> web.Application:
    """The web view of ``project``'s audit store.

    ``approve(run_id, user) -> new run id`` continues a run awaiting approval (raising a
    ``TechnicianOpsError`` to refuse); ``auth(request)`` names the signed-in user, or None.  Without
    ``auth`` (or ``approve``) the view is read-only and shows no Approve button.  ``csrf_secret``
    keys the approve form's tokens: at least 16 random bytes, kept by the server.
    """
    if not isinstance(csrf_secret, bytes) or len(csrf_secret) < 16:
        raise ValueError("csrf_secret must be at least 16 random bytes (secrets.token_bytes(32))")
    app = web.Application(middlewares=[_guard], client_max_size=64 * 1024)
    app[CONFIG] = _Config(project, approve, csrf_secret, auth)
    app.router.add_get("/", history_page, name="history")
    app.router.add_get("/runs/{run_id}", run_page, name="run")
    app.router.add_get("/runs/{run_id}/report", report_page, name="report")
    app.router.add_post("/runs/{run_id}/approve", approve_action, name="approve")
    return app


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Security headers on every answer; refusals and errors as pages, never a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
    except Problem as exc:
        response = _error(request, exc.status, exc.message, exc.hint)
    except NotFound as exc:
        response = _error(request, 404, exc.message, exc.hint)
    except TechnicianOpsError as exc:
        response = _error(request, 503, exc.message, exc.hint)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect: raised on, with the headers
            exc.headers.update(HEADERS)
            raise
        response = _error(request, exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 says which methods there are
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:  # noqa: BLE001 - a bug: logged here, a plain page for the browser
        log.exception("web view: %s %s failed", request.method, request.path)
        response = _error(request, 500, "internal error: see the server's log")
    for key, value in HEADERS.items():
        response.headers[key] = value
    return response


async def _blocking(fn: Callable[..., T], *args: Any) -> T:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def _config(request: web.Request) -> _Config:
    return request.app[CONFIG]


def _run_id(request: web.Request) -> str:
    raw = request.match_info.get("run_id", "")
    if not RUN_ID.fullmatch(raw):
        raise Problem(400, "not a run id: a run id is a UUID like 0190c2d4-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
                      "the history lists recent runs")
    return raw


def _record(project: Project, run_id: str) -> dict[str, Any]:
    """The full record of a run (a full id only: the store also takes prefixes, this view never asks)."""
    from technician_ops.api import show

    record = show(run_id, project).record
    if record is None or str(record.get("run_id") or "") != run_id:
        raise NotFound(f"no run {run_id} in the audit store")
    return record


# -- rendering ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    from technician_ops.outputs.report import secret_versions, seconds

    # The report's card macros are found beside our own templates; ChainableUndefined as there: a
    # crafted or older record that lacks a field renders it empty, never fails.
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(TEMPLATES)), jinja2.FileSystemLoader(str(REPORT_TEMPLATES))]),
        autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(seconds=seconds, secret_versions=secret_versions, outcome_css=outcome_css)
    return env


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    router = request.app.router
    text = _environment().get_template(template).render(
        history_url=str(router["history"].url_for()), **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _error(request: web.Request, status: int, message: str, hint: str | None = None) -> web.Response:
    from technician_ops.outputs.report import clean

    try:
        return _page(request, "error.html.j2", status=status, status_code=status, message=clean(str(message)),
                     hint=clean(hint) if hint else None)
    except Exception:  # noqa: BLE001 - the error page itself failed: plain text, still an answer
        log.exception("web view: cannot render the error page")
        return web.Response(text=f"{status}\n", status=status, content_type="text/plain")


def outcome_css(outcome: Any) -> str:
    """The badge colour of an outcome."""
    text = str(outcome or "")
    if text == Outcome.SUCCEEDED.value:
        return "ok"
    if text in (Outcome.ROLLED_BACK.value, Outcome.RUNNING.value, AWAITING_APPROVAL, Outcome.INTERRUPTED.value):
        return "warn"
    if text in (Outcome.SKIPPED.value,):
        return "skipped"
    return "bad"


def _stamp(value: Any) -> str:
    from technician_ops.outputs.report import parse_when

    when = parse_when(value)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if when else ""


# -- GET / : the history ------------------------------------------------------------------------


def _outcomes() -> list[str]:
    known = [o.value for o in Outcome]
    return known + ([AWAITING_APPROVAL] if AWAITING_APPROVAL not in known else [])


@dataclass
class Filters:
    runbook: str | None = None
    outcome: str | None = None
    origin: str | None = None
    since: dt.datetime | None = None
    since_text: str = ""
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(cls, query: Any) -> Filters:
        """The filters of a query string; anything malformed is a 400, never passed on."""
        f = cls()
        runbook = (query.get("runbook") or "").strip()
        if runbook:
            if not RUNBOOK.fullmatch(runbook):
                raise Problem(400, "not a runbook name: letters, digits, '.', '_' and '-' only")
            f.runbook = runbook
        for key in ("outcome", "origin"):
            value = (query.get(key) or "").strip()
            if value:
                if not WORD.fullmatch(value):
                    raise Problem(400, f"not an {key}: lower-case letters, digits, '_' and '-' only")
                setattr(f, key, value)
        if f.outcome and f.outcome not in _outcomes():
            raise Problem(400, f"unknown outcome {f.outcome!r}", "one of: " + ", ".join(_outcomes()))
        f.since_text = (query.get("since") or "").strip()
        if f.since_text:
            f.since = parse_since(f.since_text)
        f.limit = _int(query, "limit", DEFAULT_LIMIT, 1, max(LIMITS))
        f.offset = _int(query, "offset", 0, 0, MAX_OFFSET)
        return f

    def query(self, **over: Any) -> dict[str, str]:
        """These filters as a query string's fields (defaults left out), with ``over`` applied."""
        values: dict[str, Any] = {"runbook": self.runbook, "outcome": self.outcome, "origin": self.origin,
                                  "since": self.since_text, "limit": self.limit if self.limit != DEFAULT_LIMIT else None,
                                  "offset": self.offset or None}
        values.update(over)
        return {k: str(v) for k, v in values.items() if v not in (None, "", 0)}


def _int(query: Any, key: str, default: int, low: int, high: int) -> int:
    text = (query.get(key) or "").strip()
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise Problem(400, f"{key} must be a whole number from {low} to {high}")
    return int(text)


def parse_since(text: str) -> dt.datetime:
    """YYYY-MM-DD[THH:MM[:SS]] (UTC unless it carries an offset), or an age: 12h, 7d, 2w (as ``history --since``)."""
    age = re.fullmatch(r"(\d{1,5})([hdw])", text)
    try:
        if age:
            unit = {"h": "hours", "d": "days", "w": "weeks"}[age.group(2)]
            return dt.datetime.now(dt.timezone.utc) - dt.timedelta(**{unit: int(age.group(1))})
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?", text):
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        pass
    raise Problem(400, f"since: {text[:40]!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC) nor an age (12h, 7d, 2w)")


@dataclass
class Page:
    rows: list[dict[str, Any]]
    more: bool  # another page follows
    capped: bool  # a filter applied here read SCAN rows and stopped: older matches are not shown


def history_rows(project: Project, f: Filters) -> Page:
    """One page of the history, newest first.

    The store filters by runbook, outcome and start and stops at a limit; an origin (and an outcome
    it does not know yet) is filtered here, over the newest ``SCAN`` runs.
    """
    from technician_ops.api import history

    in_store = f.outcome if f.outcome in {o.value for o in Outcome} else None
    here = bool(f.origin) or (f.outcome is not None and in_store is None)
    want = SCAN if here else f.offset + f.limit + 1
    rows = history(project, f.runbook, limit=want, outcome=in_store, since=f.since)
    capped = here and len(rows) >= want
    if f.origin:
        rows = [r for r in rows if r.get("origin") == f.origin]
    if f.outcome and in_store is None:
        rows = [r for r in rows if r.get("outcome") == f.outcome]
    return Page([_row(r) for r in rows[f.offset:f.offset + f.limit]], len(rows) > f.offset + f.limit, capped)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    from technician_ops.outputs.report import as_text, cleaned, parse_when, seconds

    row = cleaned(row)
    began, ended = parse_when(row.get("started_at")), parse_when(row.get("ended_at"))
    took = seconds((ended - began).total_seconds()) if began and ended else ""
    return {**row, "started": _stamp(row.get("started_at")), "took": took, "outcome": as_text(row.get("outcome")),
            "css": outcome_css(row.get("outcome")), "short": str(row.get("run_id") or "")[:13],
            "linkable": bool(RUN_ID.fullmatch(str(row.get("run_id") or "")))}


async def history_page(request: web.Request) -> web.Response:
    cfg = _config(request)
    f = Filters.parse(request.query)
    page = await _blocking(history_rows, cfg.project, f)
    chain = await _blocking(cfg.chain.get, cfg.project)
    here = request.app.router["history"].url_for()
    newer = str(here.with_query(f.query(offset=max(f.offset - f.limit, 0)))) if f.offset else None
    older = str(here.with_query(f.query(offset=f.offset + f.limit))) if page.more and f.offset + f.limit <= MAX_OFFSET else None
    run = request.app.router["run"]
    for row in page.rows:
        row["url"] = str(run.url_for(run_id=row["run_id"])) if row["linkable"] else None
    return _page(request, "history.html.j2", page=page, f=f, chain=chain, outcomes=_outcomes(), limits=LIMITS,
                 newer=newer, older=older, filtered=any((f.runbook, f.outcome, f.origin, f.since_text)))


# -- GET /runs/{id} : the run page --------------------------------------------------------------


@dataclass
class Grid:
    """Steps × hosts: a row per step, a column per host, each cell the host's status (or None)."""

    hosts: list[str]
    rows: list[tuple[Any, list[Any]]]  # (StepView, [HostView | None per host])


def _grid(steps: list[Any]) -> Grid:
    hosts: list[str] = []
    for step in steps:
        for h in step.hosts:
            if h.name not in hosts:
                hosts.append(h.name)
    rows = []
    for step in steps:
        by_name = {h.name: h for h in step.hosts}
        rows.append((step, [by_name.get(name) for name in hosts]))
    return Grid(hosts, rows)


_ORIGIN_SHOWN = ("type", "system", "run_id", "url")  # already in the report's facts


def _origin_details(origin: Any) -> tuple[list[tuple[str, str]], list[tuple[str, list[tuple[str, str]]]], str | None]:
    """What an origin carries beyond type/system/run id/url (an alert's fingerprint, labels, annotations):
    (scalar fields, [(name, key/value pairs)], a link worth offering or None)."""
    from technician_ops.outputs.report import as_text

    if not isinstance(origin, dict):
        return [], [], None
    scalars: list[tuple[str, str]] = []
    tables: list[tuple[str, list[tuple[str, str]]]] = []
    for key, value in origin.items():
        if key in _ORIGIN_SHOWN or value in (None, "", [], {}):
            continue
        if isinstance(value, dict):
            tables.append((str(key), [(str(k), as_text(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]))
        else:
            scalars.append((str(key), as_text(value)))
    scalars.sort(key=lambda kv: (kv[0] != "fingerprint", kv[0]))
    tables.sort(key=lambda kv: (kv[0] != "labels", kv[0]))
    url = origin.get("url")
    link = url if isinstance(url, str) and re.match(r"https?://[^\s]+$", url, re.I) else None
    return scalars, tables, link


def csrf_token(secret: bytes, user: str, run_id: str) -> str:
    """The approve form's token: only the server (holding ``secret``) can make it, for this user and this run."""
    message = b"technician-ops approve\0" + user.encode("utf-8", "surrogatepass") + b"\0" + run_id.encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _user(cfg: _Config, request: web.Request) -> str | None:
    if cfg.auth is None:
        return None
    user = cfg.auth(request)
    return user if isinstance(user, str) and user else None


async def run_page(request: web.Request) -> web.Response:
    from technician_ops.outputs.report import Source, build

    cfg = _config(request)
    run_id = _run_id(request)
    record = await _blocking(_record, cfg.project, run_id)
    # The page is the record: the runbook's text (read from disk) is the full report's business.
    r = build(record, Source(str(record.get("path") or ""), None, "missing"))
    user = _user(cfg, request)
    awaiting = r.outcome == AWAITING_APPROVAL
    can_approve = awaiting and cfg.approve is not None and user is not None
    scalars, tables, origin_link = _origin_details(r.record.get("origin"))
    router = request.app.router
    return _page(request, "run.html.j2", r=r, run_id=run_id, grid=_grid(r.steps), undo_grid=_grid(r.undo_steps),
                 origin_fields=scalars, origin_tables=tables, origin_link=origin_link,
                 awaiting=awaiting, can_approve=can_approve, user=user,
                 read_only=cfg.approve is None or cfg.auth is None,
                 csrf=csrf_token(cfg.secret, user, run_id) if can_approve and user else None,
                 approve_url=str(router["approve"].url_for(run_id=run_id)),
                 report_url=str(router["report"].url_for(run_id=run_id)),
                 refresh=r.outcome == Outcome.RUNNING.value)


# -- GET /runs/{id}/report : the full HTML report -----------------------------------------------


def report_html(project: Project, run_id: str) -> str:
    """``report --format html`` of the run, except that the runbook is read only from inside the project.

    A record names the runbook file that ran; the web view shows the report to whoever may read the
    view, so a recorded path outside the project is not opened (the report then uses the project's
    runbook of that name, or the record alone, and says so).
    """
    from technician_ops.outputs.report import build, read_runbook
    from technician_ops.outputs.report_html import render_html

    record = _record(project, run_id)
    recorded = str(record.get("path") or "")
    root = project.root.resolve()
    inside = False
    if recorded:
        try:
            inside = Path(recorded).resolve().is_relative_to(root)
        except (OSError, RuntimeError, ValueError):
            inside = False
    source = read_runbook(record if inside else {**record, "path": ""}, project.root)
    return render_html(build(record, source))


async def report_page(request: web.Request) -> web.Response:
    cfg = _config(request)
    run_id = _run_id(request)
    text = await _blocking(report_html, cfg.project, run_id)
    return web.Response(text=text, content_type="text/html", charset="utf-8")


# -- POST /runs/{id}/approve : the one write ----------------------------------------------------


def same_origin(request: web.Request) -> bool:
    """Whether the request comes from a page of this server: its Origin (else its Referer) names our host.

    Host and port are compared, not the scheme: behind a proxy that ends TLS the request arrives as
    http while the browser says https.  No Origin and no Referer, or ``Origin: null``, is refused.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    try:
        theirs, ours = URL(source), URL(f"http://{request.host}")
    except ValueError:
        return False
    if theirs.scheme not in ("http", "https") or not theirs.host or not ours.host:
        return False
    return (theirs.host.lower(), theirs.explicit_port) == (ours.host.lower(), ours.explicit_port)


async def approve_action(request: web.Request) -> web.StreamResponse:
    cfg = _config(request)
    run_id = _run_id(request)
    if cfg.approve is None or cfg.auth is None:
        raise Problem(403, "this web view is read-only: approving needs a server started with authentication")
    user = _user(cfg, request)
    if user is None:
        raise Problem(403, "sign in to approve a run")
    if not same_origin(request):
        raise Problem(403, "refused: the request did not come from a page of this server (Origin/Referer)")
    if request.content_type != "application/x-www-form-urlencoded":
        raise Problem(415, "the approve form is sent as application/x-www-form-urlencoded")
    if request.content_length is None or request.content_length > MAX_FORM_BYTES:
        raise Problem(413, "the approve form is a few bytes long")
    form = await request.post()
    token = form.get("csrf")
    expected = csrf_token(cfg.secret, user, run_id)
    if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8", "replace"), expected.encode()):
        raise Problem(403, "refused: the form's token is missing or wrong", "reload the run page and approve again")
    record = await _blocking(_record, cfg.project, run_id)
    if record.get("outcome") != AWAITING_APPROVAL:
        raise Problem(409, f"run {run_id} is not awaiting approval (its outcome is {record.get('outcome')!s})")
    try:
        new_id = await _blocking(cfg.approve, run_id, user)
    except NotFound:
        raise
    except TechnicianOpsError as exc:
        raise Problem(409, exc.message, exc.hint) from None
    target = str(new_id or "").lower()
    where = target if RUN_ID.fullmatch(target) else run_id
    log.info("web view: %s approved run %s (new run %s)", user, run_id, target or "?")
    return web.Response(status=303, headers={"Location": str(request.app.router["run"].url_for(run_id=where))})
