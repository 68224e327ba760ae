"""The server: aiohttp.web in front, a journal under it, a bounded queue and fixed workers behind.

    POST /hooks/alertmanager   Alertmanager's webhook (payload version 4)
    GET  /healthz              200 + JSON: queue depth, workers busy, draining
    GET  /metrics              Prometheus text exposition

``/`` and ``/runs/...`` are left for a web view: ``build_app(server, extra=[...])``
calls each ``extra(app)`` so another module can add its routes or sub-applications.

A request, in order: draining -> 503; bearer token (when one is configured) ->
401; body over ``max_body`` -> 413 (aiohttp's ``client_max_size``); HMAC of the
body (when a secret is configured) -> 401; not a version 4 payload -> 400; the
alerts decided (``dispatch.py``); runs that would overflow the queue -> 429 for
the whole notification (Alertmanager sends it again later); the decisions
journaled and fsync'd; 202 with what was decided.  A refused alert is still a
202: the notification was received, and sending it again would change nothing.

Each run is ``python -m technician_ops.cli --project ROOT run NAME -p k=v...
[--limit HOST] --output json --run-id ID`` in a process group of its own, with
``TECHNICIAN_OPS_ORIGIN=alertmanager`` and the alert in
``TECHNICIAN_OPS_ORIGIN_DETAIL``; the run takes the runbook's lock as any run
does.  Values from an alert reach it as argv elements and JSON in the
environment, never through a shell.  Holds (approve steps) and refusals are
recorded in this process, one at a time, through ``api``.

SIGTERM/SIGINT: stop accepting (503), let running runs finish until
``drain_timeout``, then SIGTERM their process groups (each run stops and rolls
back, as a run does) and SIGKILL what is left after ``kill_grace``.  Jobs not
started stay in the journal and run after the next start.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from technician_ops import api
from technician_ops.audit.store import process_identity
from technician_ops.engine.origin import ALERTMANAGER, ORIGIN_DETAIL_ENV, ORIGIN_ENV
from technician_ops.errors import AuditError, ConfigError, TechnicianOpsError
from technician_ops.outcomes import Outcome
from technician_ops.serve.alerts import Notification, PayloadError, parse
from technician_ops.serve.config import HMAC_ENV, TOKEN_ENV, ServeConfig, is_loopback
from technician_ops.serve.dispatch import Decision, Dispatcher, RateLimit
from technician_ops.serve.journal import Journal, Pending
from technician_ops.serve.metrics import Metrics

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("technician_ops.serve")

HOOK = "/hooks/alertmanager"
SIGNATURE_HEADER = "X-Technician-Ops-Signature"  # "sha256=" + hex HMAC-SHA256 of the body
RECORD_QUEUE = 10_000  # holds and refusals waiting to be recorded
RETRY_AFTER_FULL = "30"
RETRY_AFTER_DRAINING = "60"
STDERR_TAIL = 4096
# Never handed to a run: the server's own credentials, and the origin it sets itself.
_WITHHELD = (TOKEN_ENV, HMAC_ENV, ORIGIN_ENV, ORIGIN_DETAIL_ENV)


class RunQueue:
    """Accepted runs, oldest first; ``get`` hands out the oldest whose runbook's lock none of our own runs
    holds, so two alerts for one runbook run one after the other here instead of the second being
    ``skipped`` by our own first.  (A lock held by anyone else still skips the run, as it does for cron.)"""

    def __init__(self) -> None:
        self._items: collections.deque[Pending] = collections.deque()
        self._held: set[str] = set()
        self._changed = asyncio.Event()

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, pending: Pending) -> None:
        self._items.append(pending)
        self._changed.set()

    async def get(self, lock_of: Callable[[Pending], str]) -> tuple[Pending, str]:
        while True:
            for i, pending in enumerate(self._items):
                lock = lock_of(pending)
                if lock not in self._held:
                    del self._items[i]
                    self._held.add(lock)
                    return pending, lock
            self._changed.clear()
            await self._changed.wait()

    def release(self, lock: str) -> None:
        self._held.discard(lock)
        self._changed.set()


class Server:
    """One serving process: the journal, the queues, the workers.  ``start`` before ``build_app``'s app serves."""

    def __init__(self, config: ServeConfig) -> None:
        config.check()
        self.config = config
        self.project = config.project
        self.journal = Journal(config.project.state_dir / "serve")
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self._runbooks, self.journal.is_seen, RateLimit(*config.rate), api.approval_steps)
        self.draining = False
        self.runs = RunQueue()
        self.records: asyncio.Queue[Pending] = asyncio.Queue()
        self.children: dict[int, Pending] = {}  # pid (= its process group) -> the job it runs
        self.releases: dict[int, str] = {}  # pid (= its process group) -> identity: runs the web view released
        self.busy = 0
        self._decide = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None]] = set()
        self._table: tuple[Any, list[Any]] = ((), [])
        # Holds and refusals: recorded on one thread, through one store kept open (an alert storm is
        # hundreds of refusals; opening the store for each would be most of the work).
        self._recording = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._audit: Any = None

    # -- the runbooks and their triggers ------------------------------------------------------

    def _runbooks(self) -> list[Any]:
        """The runbooks with triggers, read again when a runbook file changed (added, edited, removed)."""
        directory = self.project.runbooks_dir
        try:
            signature = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                     for p in directory.glob("*.md")))
        except OSError:
            signature = ()
        if signature != self._table[0]:
            table = api.triggered_runbooks(self.project, warn=lambda text: log.warning("%s", text))
            self._table = (signature, table)
            log.info("triggers: %s", ", ".join(f"{rb.name} ({len(rb.triggers)})" for rb in table) or "none")
        return self._table[1]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal, queue again what it accepted and did not finish, start the workers."""
        recovered = await asyncio.to_thread(self.journal.open)
        if recovered.torn:
            log.warning("journal: %d unreadable line(s) skipped (a write cut short by a crash)", recovered.torn)
        for pending in recovered.pending:
            (self.runs if pending.job.get("kind") == "run" else self.records).put_nowait(pending)
        if recovered.pending:
            log.info("journal: %d accepted alert(s) not finished before the last stop, queued again",
                     len(recovered.pending))
        self._runbooks()
        self.metrics.workers.set(self.config.workers)
        self._gauges()
        for n in range(self.config.workers):
            self._tasks.append(asyncio.create_task(self._worker(n), name=f"run-worker-{n}"))
        self._tasks.append(asyncio.create_task(self._recorder(), name="recorder"))

    async def drain(self) -> None:
        """Stop accepting; let running runs finish by the deadline, then stop them; exit with nothing lost."""
        self.draining = True
        for task in list(self._idle):
            task.cancel()
        running = [t for t in self._tasks if t not in self._idle]
        log.info("draining: %d run(s) running, %d queued (kept in the journal for the next start)",
                 len(self.children), self.runs.qsize())
        done, pending = await asyncio.wait(running, timeout=self.config.drain_timeout) if running else (set(), set())
        if pending:
            log.warning("drain deadline (%gs) passed: stopping %d run(s) (SIGTERM: they stop and roll back)",
                        self.config.drain_timeout, len(self.children))
            self._signal_children(signal.SIGTERM)
            done, pending = await asyncio.wait(pending, timeout=self.config.kill_grace)
            if pending:
                log.error("run(s) still going %gs after SIGTERM: SIGKILL", self.config.kill_grace)
                self._signal_children(signal.SIGKILL)
                await asyncio.wait(pending, timeout=10)
        await self._drain_releases()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._on_recorder(self._close_audit)
        self._recording.shutdown(wait=True)
        self.journal.close()

    async def _drain_releases(self) -> None:
        """Runs the web view released finish by the deadline, or stop (and roll back) like ours."""
        deadline = time.monotonic() + self.config.drain_timeout
        for sig, wait in ((None, deadline), (signal.SIGTERM, time.monotonic() + self.config.kill_grace),
                          (signal.SIGKILL, time.monotonic() + 10)):
            if sig is not None:
                for pid, identity in list(self.releases.items()):
                    if process_identity(pid) == identity:
                        try:
                            os.killpg(pid, sig)
                        except (ProcessLookupError, PermissionError):
                            pass
                if sig is signal.SIGTERM:
                    wait = time.monotonic() + self.config.kill_grace
            while self.releases and time.monotonic() < wait:
                await asyncio.sleep(0.2)
            if not self.releases:
                return

    def release_environ(self) -> dict[str, str]:
        """The environment of a run the web view releases: the server's store and notify URL, no secret of ours."""
        env = {k: v for k, v in os.environ.items() if k not in _WITHHELD}
        if self.config.notify_url:
            env["TECHNICIAN_OPS_NOTIFY_URL"] = self.config.notify_url
        if self.config.audit_url:
            env["TECHNICIAN_OPS_AUDIT_URL"] = self.config.audit_url
        return env

    def _signal_children(self, sig: int) -> None:
        for pid, pending in list(self.children.items()):
            if process_identity(pid) != pending.identity:
                continue  # gone, and the number may be someone else's now
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _gauges(self) -> None:
        self.metrics.queue_depth.set(self.runs.qsize())
        self.metrics.busy.set(self.busy)

    # -- the webhook ---------------------------------------------------------------------------

    async def hook(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if self.draining:
            return self._answer(web.json_response({"error": "draining: not accepting alerts"}, status=503,
                                                  headers={"Retry-After": RETRY_AFTER_DRAINING}))
        if self.config.token is not None and not self._bearer_ok(request.headers.get("Authorization", "")):
            return self._answer(web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                                  headers={"WWW-Authenticate": 'Bearer realm="technician-ops"'}))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._answer(web.json_response(
                {"error": f"the body is larger than {self.config.max_body} bytes"}, status=413))
        if self.config.hmac_secret is not None and not self._signature_ok(request.headers.get(SIGNATURE_HEADER, ""), body):
            return self._answer(web.json_response({"error": f"missing or wrong {SIGNATURE_HEADER}"}, status=401))
        try:
            notification = parse(body)
        except PayloadError as exc:
            return self._answer(web.json_response({"error": str(exc)}, status=400))
        del body
        async with self._decide:
            if self.draining:
                return self._answer(web.json_response({"error": "draining: not accepting alerts"}, status=503,
                                                      headers={"Retry-After": RETRY_AFTER_DRAINING}))
            now = time.time()
            decisions = self.dispatcher.decide(notification, now)
            pending = self._pending(decisions, notification, now)
            runs = [p for p in pending if p.job["kind"] == "run"]
            if self.runs.qsize() + len(runs) > self.config.queue_size or \
                    self.records.qsize() + len(pending) - len(runs) > RECORD_QUEUE:
                log.warning("queue full (%d/%d): notification of %d alert(s) answered 429", self.runs.qsize(),
                            self.config.queue_size, len(notification.alerts))
                return self._answer(web.json_response(
                    {"error": f"the queue is full ({self.config.queue_size} runs waiting): send it again later"},
                    status=429, headers={"Retry-After": RETRY_AFTER_FULL}))
            entries = [{"t": "job", "id": p.id, "at": p.at, "key": p.key, "job": p.job} for p in pending]
            entries += [{"t": "resolved", "key": d.alert.key, "at": now} for d in decisions if d.action == "resolved"]
            try:
                await asyncio.to_thread(self.journal.append, entries)
            except TechnicianOpsError as exc:
                log.error("journal: %s", exc.message)
                return self._answer(web.json_response({"error": "cannot journal the alerts: not accepted"},
                                                      status=503, headers={"Retry-After": RETRY_AFTER_FULL}))
            self.dispatcher.commit(decisions, now)
            for p in pending:
                (self.runs if p.job["kind"] == "run" else self.records).put_nowait(p)
        self._gauges()
        self._count(decisions)
        summary = self._summary(decisions)
        return self._answer(web.json_response(summary, status=202))

    def _pending(self, decisions: list[Decision], notification: Notification, now: float) -> list[Pending]:
        out = []
        for decision in decisions:
            for job in decision.jobs(notification.receiver):
                job_id = api.new_run_id()  # a time-ordered unique id; the run gets its own
                job["detail"]["alert_id"] = job_id
                out.append(Pending(job_id, now, decision.alert.key, job))
        return out

    def _bearer_ok(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        assert self.config.token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"), self.config.token)

    def _signature_ok(self, header: str, body: bytes) -> bool:
        assert self.config.hmac_secret is not None
        expected = "sha256=" + hmac.new(self.config.hmac_secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(header.strip().lower().encode("ascii", errors="replace"), expected.encode("ascii"))

    def _answer(self, response: web.Response) -> web.Response:
        self.metrics.requests.labels(str(response.status)).inc()
        return response

    def _count(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            alert = decision.alert
            self.metrics.received.labels(alert.status).inc()
            what = _show(alert.labels.get("alertname", "?"))
            if decision.action in ("run", "hold"):
                self.metrics.accepted.labels(decision.runbooks[0]).inc()
                log.info("alert %s (%s) accepted: runbook %s %s%s", what, alert.fingerprint, decision.runbooks[0],
                         _show(decision.params), f" --limit {_show(decision.limit)}" if decision.limit else "")
            elif decision.action == "refuse":
                self.metrics.refused.labels(decision.code or "refused").inc()
                log.warning("alert %s (%s) refused (%s): %s", what, alert.fingerprint, decision.code,
                            _show(decision.reason))
            elif decision.action == "no_trigger":
                self.metrics.refused.labels("no_trigger").inc()
                log.info("alert %s (%s): no runbook's trigger matches it", what, alert.fingerprint)
            elif decision.action == "duplicate":
                self.metrics.duplicates.inc()
                log.debug("alert %s (%s): a repeated notification, already decided", what, alert.fingerprint)
            elif decision.action == "resolved":
                log.info("alert %s (%s) resolved (runbook %s): recorded, nothing runs", what, alert.fingerprint,
                         ", ".join(decision.runbooks))

    @staticmethod
    def _summary(decisions: list[Decision]) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for d in decisions:
            counts[d.action] = counts.get(d.action, 0) + 1
        return {"decided": counts,
                "alerts": [{"fingerprint": d.alert.fingerprint, "status": d.alert.status, "action": d.action,
                            **({"runbooks": d.runbooks} if d.runbooks else {}),
                            **({"reason": d.code} if d.code else {})} for d in decisions[:100]]}

    # -- health and metrics ----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"status": "draining" if self.draining else "ok", "queue": self.runs.qsize(),
                                  "queue_size": self.config.queue_size, "workers": self.config.workers,
                                  "busy": self.busy, "records_waiting": self.records.qsize()})

    async def metrics_page(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        self._gauges()
        return web.Response(body=self.metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- the workers -------------------------------------------------------------------------------

    async def _worker(self, n: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self.draining:
            self._idle.add(task)
            try:
                pending, lock = await self.runs.get(self._lock_of)
            finally:
                self._idle.discard(task)
            if self.draining:
                self.runs.release(lock)
                return  # not started: still in the journal, run after the next start
            self.busy += 1
            self._gauges()
            try:
                outcome, run_id = await self._run(pending)
            except Exception:  # noqa: BLE001 - one job's trouble must not stop the worker
                log.exception("worker %d: job %s failed", n, pending.id)
                outcome, run_id = "error", pending.run_id
            finally:
                self.busy -= 1
                self.runs.release(lock)
                self._gauges()
            await self._done(pending, outcome, run_id)

    def _lock_of(self, pending: Pending) -> str:
        name = str(pending.job.get("runbook"))
        runbook = next((rb for rb in self._table[1] if rb.name == name), None)
        return str(runbook.lock) if runbook is not None else name

    async def _run(self, pending: Pending) -> tuple[str, str | None]:
        job = pending.job
        if pending.run_id is not None:  # started before a restart
            if pending.pid is not None and process_identity(pending.pid) == pending.identity \
                    and pending.identity is not None:
                await self._adopt(pending)  # its run goes on in its own session: wait for it, never run it twice
            outcome = await asyncio.to_thread(self._outcome, pending.run_id)
            if outcome is not None:
                log.info("job %s: run %s was started before the restart and is recorded (%s): not run again",
                         pending.id, pending.run_id, outcome)
                return outcome, pending.run_id
        else:
            pending.run_id = api.new_run_id()
            await asyncio.to_thread(self.journal.append, [{"t": "started", "id": pending.id, "run_id": pending.run_id}])
            if job.get("limit") and await self._on_recorder(self._names_a_group, str(job["limit"])):
                reason = (f"the trigger's hosts rendered {job['limit']!r}, which is a group of the inventory, not one "
                          "host: an alert's run is limited to one host")
                await self._on_recorder(self._refuse, self._request(job, pending.run_id), reason)
                log.warning("run %s: runbook %s refused: %s", pending.run_id, job["runbook"], _show(reason))
                return Outcome.REFUSED.value, pending.run_id
        run_id = pending.run_id
        argv = [self.config.python, "-m", "technician_ops.cli", "--project", str(self.project.root), "run",
                str(job["runbook"])]
        for key, value in sorted(job.get("params", {}).items()):
            argv += ["-p", f"{key}={value}"]
        if job.get("limit"):
            argv += ["--limit", str(job["limit"])]
        argv += ["--output", "json", "--run-id", run_id]
        started = time.monotonic()
        # stderr to a file of the run, not a pipe: a run outlives a killed server, and must not die of EPIPE
        logs = self.journal.directory / "runs"
        logs.mkdir(mode=0o700, exist_ok=True)
        err_path = logs / f"{run_id}.stderr"
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err_fd,
                env=self._environ(job), cwd=str(self.project.root), start_new_session=True)
        finally:
            os.close(err_fd)
        pending.pid, pending.identity = proc.pid, process_identity(proc.pid)
        self.children[proc.pid] = pending
        try:
            await asyncio.to_thread(self.journal.append, [{"t": "spawned", "id": pending.id, "pid": proc.pid,
                                                           "identity": pending.identity}])
            log.info("run %s: runbook %s started for alert %s (pid %d)", run_id, job["runbook"],
                     job["detail"].get("fingerprint"), proc.pid)
            rc = await proc.wait()
        finally:
            self.children.pop(proc.pid, None)
        tail = _tail(err_path)
        outcome = await asyncio.to_thread(self._outcome, run_id)
        if outcome is None:
            outcome = "error"
            log.error("run %s: runbook %s exited %d without a record: %s", run_id, job["runbook"], rc, _show(tail))
        else:
            log.info("run %s: runbook %s %s (exit %d, %.1fs)", run_id, job["runbook"], outcome, rc,
                     time.monotonic() - started)
            if rc not in (0, 1, 3, 4, 5, 75, 130) and tail:
                log.warning("run %s: %s", run_id, _show(tail))
        if not tail:
            err_path.unlink(missing_ok=True)
        return outcome, run_id

    async def _on_recorder(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` on the recorder's one thread: everything this process asks Ansible (an inventory)
        or the store happens there, one call at a time (Ansible's plugin loader is not thread safe)."""
        return await asyncio.get_running_loop().run_in_executor(self._recording, func, *args)

    def _refuse(self, request: Any, reason: str) -> None:
        if self._audit is None:
            self._audit = api.open_audit(self.project)
        api.refuse_run(request, self.project, reason, audit=self._audit)

    def _names_a_group(self, name: str) -> bool:
        try:
            return api.inventory_name(self.project, name) == "group"
        except TechnicianOpsError:
            return False  # the run says what is wrong with the inventory, in its record

    def _request(self, job: dict[str, Any], run_id: str) -> Any:
        return api.RunRequest(str(job["runbook"]), dict(job.get("params") or {}), limit=job.get("limit"),
                              run_id=run_id, environ=self._environ(job))

    async def _adopt(self, pending: Pending) -> None:
        """Wait for a run a killed server started (it still runs, in its own session); stopped at the drain
        deadline like our own."""
        assert pending.pid is not None
        log.info("job %s: run %s (pid %d) started before the restart is still running: waiting for it",
                 pending.id, pending.run_id, pending.pid)
        self.children[pending.pid] = pending
        try:
            while process_identity(pending.pid) == pending.identity:
                await asyncio.sleep(0.5)
        finally:
            self.children.pop(pending.pid, None)

    def _environ(self, job: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _WITHHELD}
        env[ORIGIN_ENV] = ALERTMANAGER
        env[ORIGIN_DETAIL_ENV] = json.dumps(job["detail"], ensure_ascii=True, sort_keys=True)
        if self.config.notify_url:
            env["TECHNICIAN_OPS_NOTIFY_URL"] = self.config.notify_url
        if self.config.audit_url:
            env["TECHNICIAN_OPS_AUDIT_URL"] = self.config.audit_url
        return env

    def _outcome(self, run_id: str) -> str | None:
        try:
            return api.run_outcome(self.project, run_id)
        except TechnicianOpsError as exc:
            log.error("audit store: %s", exc.message)
            return None

    async def _recorder(self) -> None:
        """Holds and refusals, recorded one at a time in this process (each is a record, not a run)."""
        task = asyncio.current_task()
        assert task is not None
        while not self.draining:
            self._idle.add(task)
            try:
                pending = await self.records.get()
            finally:
                self._idle.discard(task)
            if self.draining:
                return
            job = pending.job
            try:
                outcome, run_id = await self._on_recorder(self._record, pending)
            except TechnicianOpsError as exc:
                log.warning("job %s (%s): %s", pending.id, job["runbook"], exc.message)
                outcome, run_id = Outcome.REFUSED.value, pending.run_id
            except Exception:  # noqa: BLE001
                log.exception("job %s: recording failed", pending.id)
                outcome, run_id = "error", None
            await self._done(pending, outcome, run_id)

    def _record(self, pending: Pending) -> tuple[str, str | None]:
        """One hold or refusal (on the recorder's thread)."""
        try:
            if self._audit is None:
                self._audit = api.open_audit(self.project)
            return self._record_in(pending, self._audit)
        except TechnicianOpsError as exc:
            if isinstance(exc, AuditError):
                self._close_audit()  # the store's trouble: opened again for the next one
            raise

    def _close_audit(self) -> None:
        if self._audit is not None:
            try:
                self._audit.close()
            finally:
                self._audit = None

    def _record_in(self, pending: Pending, audit: Any) -> tuple[str, str | None]:
        job = pending.job
        run_id = pending.run_id or api.new_run_id()
        if pending.run_id is not None:
            recorded = api.run_outcome(self.project, run_id, audit=audit)
            if recorded is not None:
                return recorded, run_id  # recorded before a restart
        pending.run_id = run_id
        self.journal.append([{"t": "started", "id": pending.id, "run_id": run_id}])
        request = self._request(job, run_id)
        if job["kind"] == "hold":
            reason = f"{job['reason']}; release it with 'technician-ops approve {run_id}'"
            try:
                result = api.hold_run(request, self.project, reason, audit=audit)
            except TechnicianOpsError as exc:  # refused (recorded): bad parameters, a host not in the inventory
                log.warning("run %s: runbook %s refused: %s", run_id, job["runbook"], _show(exc.message))
                return Outcome.REFUSED.value, run_id
            log.warning("run %s: runbook %s awaiting approval: technician-ops approve %s", run_id, job["runbook"],
                        run_id)
            return result.outcome.value, run_id
        api.refuse_run(request, self.project, str(job["reason"]), audit=audit)
        return Outcome.REFUSED.value, run_id

    async def _done(self, pending: Pending, outcome: str, run_id: str | None) -> None:
        self.metrics.runs.labels(str(pending.job["runbook"]), outcome).inc()
        try:
            await asyncio.to_thread(self.journal.append,
                                    [{"t": "done", "id": pending.id, "outcome": outcome, "run_id": run_id}])
        except TechnicianOpsError as exc:
            log.error("journal: %s (job %s may run again after a restart)", exc.message, pending.id)


def _tail(path: Path) -> str:
    """The last ``STDERR_TAIL`` bytes of a run's stderr file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _show(value: Any) -> str:
    """A value from an alert or a run, for one log line: JSON, so a newline or an escape stays inert."""
    return json.dumps(value, ensure_ascii=True)[:2000]


def _guard(config: ServeConfig) -> Any:
    """What a browser could send here on its own is refused before any handler.

    - On a loopback bind, a ``Host`` that is not loopback: a DNS-rebinding page names its own host.
    - On the webhook: anything but ``application/json`` (a cross-site form or ``no-cors`` fetch can only
      send text/plain or a form without a preflight), and any request a browser marks as coming from
      another site (``Origin``, ``Sec-Fetch-Site``).  Alertmanager sends JSON and neither header.
    """
    from aiohttp import web

    loopback = is_loopback(config.host)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if loopback:
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]")[0] + "]"
            if host not in LOOPBACK_NAMES:
                return web.json_response({"error": f"Host {request.host!r} is not this loopback server"}, status=421)
        if request.path == HOOK:
            if request.content_type != "application/json":
                return web.json_response({"error": "the webhook takes application/json"}, status=415)
            if "Origin" in request.headers or request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin"):
                return web.json_response({"error": "refused: a browser's cross-site request"}, status=403)
        return await handler(request)

    return guard


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


@functools.cache
def server_key() -> Any:
    """The app's key to its ``Server`` (for the web view's releases); aiohttp is imported only to serve."""
    from aiohttp import web

    return web.AppKey("technician_ops_server", Server)


def build_app(server: Server, *, extra: Sequence[Callable[[web.Application], None]] = ()) -> web.Application:
    """The aiohttp application of ``server``; each ``extra(app)`` may add routes (``/`` and ``/runs/`` are free)."""
    from aiohttp import web

    app = web.Application(client_max_size=server.config.max_body, middlewares=[_guard(server.config)])
    app[server_key()] = server
    app.router.add_post(HOOK, server.hook)
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/metrics", server.metrics_page)
    for install in extra:
        install(app)
    return app


async def serve(config: ServeConfig, *, extra: Sequence[Callable[[web.Application], None]] = (),
                ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain (``Server.drain``).  ``ready(url)`` once listening."""
    from aiohttp import web

    server = Server(config)
    await server.start()
    app = build_app(server, extra=extra)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        server.draining = True
        await server.drain()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{config.port}"
    log.info("listening on %s%s (workers %d, queue %d, rate %d/%gs%s)", url, HOOK, config.workers,
             config.queue_size, config.rate[0], config.rate[1],
             (", bearer token" if config.token else "") + (", HMAC" if config.hmac_secret else ""))
    if ready is not None:
        ready(url)
    await stop.wait()
    log.info("stopping: no new alerts; draining")
    await server.drain()
    await runner.cleanup()
    log.info("stopped")


def run_server(config: ServeConfig, *, extra: Sequence[Callable[[web.Application], None]] = (),
               ready: Callable[[str], None] | None = None) -> None:
    asyncio.run(serve(config, extra=extra, ready=ready))


__all__ = ["HOOK", "SIGNATURE_HEADER", "Server", "build_app", "run_server", "serve"]
