"""`technician-ops serve` as a real process on a free loopback port, over the demo's local hosts: refusals
(401/413/400/429, unknown alert, missing label, host not in the inventory, lock held, rate limit, ambiguous,
approve step), deduplication, restart recovery from the journal, SIGTERM drain, a burst of 1,000 alerts, the
systemd unit, and the real Alertmanager firing through `amtool` with docs/serve.md's configuration."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, DemoProject

pytestmark = pytest.mark.integration

TOKEN = "serve-test-token-0123456789abcdef"
SECRET = "hmac-test-secret-0123456789abcdef"

FS_CLEAN = """---
name: fs-clean
summary: note the mount point an alert names, on the alert's host
hosts: web
params:
  mountpoint: {type: string, required: true}
triggers:
  - alertmanager:
      match: {alertname: DiskFull}
      params: {mountpoint: "{{ labels.mountpoint }}"}
      hosts: "{{ labels.instance | host }}"
---

```yaml {name=clean undo=none}
- ansible.builtin.lineinfile: {path: "{{ state_dir }}/cleaned", line: "{{ mountpoint }}", create: true}
```
"""
SLOW = """---
name: slow
hosts: web
params:
  pause: {type: int, required: true}
triggers:
  - alertmanager: {match: {alertname: Slow}, params: {pause: "{{ labels.pause }}"}, hosts: "{{ labels.instance | host }}"}
---

```sh {name=wait undo=none}
sleep "$PAUSE"
```
"""
SLOW_TOO = SLOW.replace("name: slow", "name: slow-too").replace("alertname: Slow}", "alertname: SlowToo}")
LOCKED = """---
name: locked
hosts: web
lock: shared-lock
triggers:
  - alertmanager: {match: {alertname: Locked}}
---

```sh {name=noop kind=check}
true
```
"""
NEEDS_HUMAN = """---
name: needs-human
hosts: db
params:
  reason: {type: string, required: true}
triggers:
  - alertmanager: {match: {alertname: NeedsHuman}, params: {reason: "{{ labels.why }}"}}
---

```text {name=confirm kind=approve}
Restart it?
```

```sh {name=act undo=none}
echo "$REASON" > "$(mktemp -d)/acted"
```
"""
AMBIGUOUS = """---
name: {name}
hosts: web
triggers:
  - alertmanager: {{match: {{alertname: Twice}}}}
---

```sh {{name=noop kind=check}}
true
```
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Served:
    """One `technician-ops serve` process."""

    def __init__(self, demo: DemoProject, log: Path, *args: str, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.demo, self.log, self.port = demo, log, port or free_port()
        self.out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "serve",
             "--bind", f"127.0.0.1:{self.port}", *args],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        wait_for(f"the server on port {self.port} ({log})", self._up, 30)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            try:
                parsed: Any = json.loads(data)
            except ValueError:
                parsed = data.decode("utf-8", "replace")
            return resp.status, dict(resp.getheaders()), parsed
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        return self.request("GET", path)

    def post(self, *alerts: dict[str, Any], token: str | None = TOKEN, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        body = raw if raw is not None else json.dumps(payload(*alerts)).encode()
        sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
                **(headers or {})}
        return self.request("POST", "/hooks/alertmanager", body, sent)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.out.close()

    def metric(self, name: str, **labels: str) -> float:
        text = self.get("/metrics")[2]
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        match = re.search(rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status, "receiver": "technician-ops",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am.example:9093",
            "alerts": list(alerts)}


STARTS = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alert(fingerprint: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": labels, "annotations": {"summary": "not for the run"}, "startsAt": STARTS,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph", "fingerprint": fingerprint}


@pytest.fixture
def project(demo: DemoProject, tmp_path: Path) -> DemoProject:
    for name, text in (("fs-clean", FS_CLEAN), ("slow", SLOW), ("slow-too", SLOW_TOO), ("locked", LOCKED), ("needs-human", NEEDS_HUMAN),
                       ("amb-a", AMBIGUOUS.format(name="amb-a")), ("amb-b", AMBIGUOUS.format(name="amb-b"))):
        demo.write_runbook(name, text)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "hmac").write_text(SECRET)
    (tmp_path / "hmac").chmod(0o600)
    return demo


@pytest.fixture
def serve(project: DemoProject, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*args: str, **kw: Any) -> Served:
        served = Served(project, tmp_path / "serve.log", "--token-file", str(tmp_path / "token"), *args, **kw)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            try:
                served.stop(signal.SIGTERM, timeout=20)
            except subprocess.TimeoutExpired:
                served.stop(signal.SIGKILL, timeout=10)
    _stop_runs_left(project)


def _stop_runs_left(demo: DemoProject) -> None:
    """Runs live in sessions of their own: a test that failed half-way must not leave one going."""
    from technician_ops.audit.store import process_identity

    journal = demo.project().state_dir / "serve" / "journal.jsonl"
    if not journal.exists():
        return
    for line in journal.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("t") == "spawned" and process_identity(entry["pid"]) == entry.get("identity"):
            try:
                os.killpg(entry["pid"], signal.SIGKILL)
            except OSError:
                pass


def records(demo: DemoProject, runbook: str | None = None, *, finished: bool = True) -> list[dict[str, Any]]:
    from technician_ops import api

    project = demo.project()
    rows = api.history(project, runbook, limit=5000)
    out = [api.show(r["run_id"], project).record or {} for r in rows if not finished or r["outcome"] != "running"]
    return sorted(out, key=lambda r: str(r.get("started_at")))


def descendants(pid: int) -> set[str]:
    """The command lines of every process below ``pid``."""
    parent: dict[int, int] = {}
    cmd: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                cmd[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            parent[int(proc.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found = set()
    for p in parent:
        q = p
        while q in parent and q != pid:
            q = parent[q]
        if q == pid and p != pid:
            found.add(cmd[p])
    return found


def fingerprint_of(record: dict[str, Any]) -> str | None:
    return ((record.get("origin") or {}).get("alert") or {}).get("fingerprint")


def cli(demo: DemoProject, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


# -- the HTTP surface --------------------------------------------------------------------------


def test_requests_are_refused_before_anything_is_decided(serve: Callable[..., Served], project: DemoProject,
                                                         tmp_path: Path) -> None:
    served = serve("--hmac-secret-file", str(tmp_path / "hmac"), "--max-body", "2048")
    good = json.dumps(payload(alert("0a", alertname="NobodyHandlesThis"))).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), good, hashlib.sha256).hexdigest()
    signed = {"X-Technician-Ops-Signature": signature}

    status, headers, body = served.post(raw=good, token=None, headers=signed)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "token" in body["error"]
    assert served.post(raw=good, token=TOKEN[:-1] + "x", headers=signed)[0] == 401
    assert served.post(raw=good, headers={"X-Technician-Ops-Signature": "sha256=" + "0" * 64})[0] == 401
    assert served.post(raw=good)[0] == 401  # the signature is required too
    assert served.post(raw=b"{" + b" " * 4096 + b"}", headers=signed)[0] == 413
    for bad, message in ((b"not json", "not JSON"), (b'{"version": "3", "alerts": []}', 'version must be "4"')):
        sig = {"X-Technician-Ops-Signature": "sha256=" + hmac.new(SECRET.encode(), bad, hashlib.sha256).hexdigest()}
        status, _, body = served.post(raw=bad, headers=sig)
        assert status == 400 and message in body["error"]

    status, _, body = served.post(raw=good, headers=signed)
    assert status == 202 and body["alerts"][0]["action"] == "no_trigger"
    status, _, health = served.get("/healthz")
    assert status == 200 and health == {"status": "ok", "queue": 0, "queue_size": 64, "workers": 2, "busy": 0,
                                        "records_waiting": 0}
    assert served.metric("technician_ops_serve_requests_total", code="401") == 4
    assert served.metric("technician_ops_serve_alerts_refused_total", reason="no_trigger") == 1
    metrics = tmp_path / "metrics.txt"
    metrics.write_text(served.get("/metrics")[2])
    lint = subprocess.run(["promtool", "check", "metrics"], stdin=metrics.open(), capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint
    assert served.stop() == 0
    log = served.log.read_text()
    assert TOKEN not in log and SECRET not in log and "no runbook's trigger matches it" in log
    assert records(project) == []  # an alert for no runbook leaves no record


def test_a_non_loopback_bind_needs_authentication(project: DemoProject) -> None:
    done = cli(project, "serve", "--bind", f"0.0.0.0:{free_port()}", timeout=30)
    assert done.returncode == 78 and "refusing to listen on 0.0.0.0 without authentication" in done.stderr


# -- alerts to runs ----------------------------------------------------------------------------


def test_alerts_run_their_runbook_once_and_every_refusal_is_recorded(serve: Callable[..., Served],
                                                                     project: DemoProject) -> None:
    """One server: the mapped run (labels -> typed parameters, instance -> --limit), its repeat not run again,
    a host not in the inventory refused by the run, the rate limit, a missing label, two runbooks matching,
    a held lock, and an approve step held for `technician-ops approve`."""
    from technician_ops.engine.lock import RunLock

    served = serve("--rate", "2/5m")
    hostile = "/srv/{{ lookup('pipe', 'touch /tmp/pwned') }}$(id)"
    first = alert("a1", alertname="DiskFull", instance="web1:9100", mountpoint=hostile, team="not-for-the-run")
    status, _, body = served.post(first)
    assert status == 202 and body["decided"] == {"run": 1}
    assert served.post(first)[2]["decided"] == {"duplicate": 1}  # Alertmanager's repeat: not run again

    # a host the inventory lacks: accepted, and the run refuses it with a record (and takes a rate slot)
    assert served.post(alert("a2", alertname="DiskFull", instance="web9:9100", mountpoint="/"))[2]["decided"] == {"run": 1}
    # the third start within 5 minutes
    assert served.post(alert("a3", alertname="DiskFull", instance="web2", mountpoint="/"))[2]["alerts"][0]["reason"] == \
        "rate_limited"
    # a group is not one host: refused before any run starts
    assert served.post(alert("a8", alertname="Slow", instance="web:9100", pause="0"))[2]["decided"] == {"run": 1}
    missing = served.post(alert("a4", alertname="DiskFull", instance="web2"))[2]
    assert missing["alerts"][0]["reason"] == "labels"
    assert served.post(alert("a5", alertname="Twice"))[2]["alerts"][0] == {
        "fingerprint": "a5", "status": "firing", "action": "refuse", "runbooks": ["amb-a", "amb-b"], "reason": "ambiguous"}
    lock = RunLock(project.project().state_dir / "locks", "shared-lock")
    lock.acquire()
    try:
        assert served.post(alert("a6", alertname="Locked"))[2]["decided"] == {"run": 1}
        wait_for("the locked run's record", lambda: records(project, "locked"), 60)
    finally:
        lock.release()
    assert served.post(alert("a7", alertname="NeedsHuman", why="disk full on db1"))[2]["decided"] == {"hold": 1}
    assert served.post(alert("a1", status="resolved", alertname="DiskFull", instance="web1:9100",
                             mountpoint=hostile))[2]["decided"] == {"resolved": 1}

    wait_for("every record", lambda: len(records(project)) >= 9, 60)
    wait_for("the queue to empty", lambda: served.get("/healthz")[2]["busy"] == 0, 30)
    by = {fingerprint_of(r): r for r in records(project) if fingerprint_of(r) not in ("a5",)}
    ran = by["a1"]
    assert ran["outcome"] == "succeeded" and ran["runbook"] == "fs-clean"
    assert ran["params"] == {"mountpoint": hostile} and ran["ansible"]["limit"] == "web1"
    assert ran["origin"]["type"] == "alertmanager"
    assert ran["origin"]["alert"]["labels"] == {"alertname": "DiskFull", "instance": "web1:9100", "mountpoint": hostile}
    assert ran["origin"]["alert"]["receiver"] == "technician-ops"
    assert "not-for-the-run" not in json.dumps(ran) and "not for the run" not in json.dumps(ran)
    assert (project.host_dir("web1") / "cleaned").read_text() == hostile + "\n"  # data, never templated
    assert not (project.host_dir("web2") / "cleaned").exists() and not Path("/tmp/pwned").exists()
    assert by["a2"]["outcome"] == "refused" and "'web9' matches no host in the inventory" in by["a2"]["reason"]
    assert by["a3"]["outcome"] == "refused" and "--rate 2/5m" in by["a3"]["reason"]
    assert by["a4"]["outcome"] == "refused" and "the alert has no label 'mountpoint'" in by["a4"]["reason"]
    assert by["a6"]["outcome"] == "skipped" and "lock" in by["a6"]["reason"]
    assert by["a8"]["outcome"] == "refused" and "'web', which is a group of the inventory" in by["a8"]["reason"]
    assert by["a8"]["ansible"] == {"limit": "web"} and by["a8"]["steps"] == {}
    twice = [r for r in records(project) if fingerprint_of(r) == "a5"]
    assert sorted(r["runbook"] for r in twice) == ["amb-a", "amb-b"]
    assert all(r["outcome"] == "refused" and "ambiguous" in r["reason"] for r in twice)
    held = by["a7"]
    assert held["outcome"] == "awaiting_approval" and held["steps"] == {}
    assert held["request"] == {"runbook": "needs-human", "params": {"reason": "disk full on db1"}, "limit": None}
    assert f"technician-ops approve {held['run_id']}" in held["reason"]
    assert served.metric("technician_ops_serve_alerts_refused_total", reason="rate_limited") == 1
    assert served.metric("technician_ops_serve_alerts_duplicate_total") == 1
    wait_for("the run counted", lambda: served.metric("technician_ops_serve_runs_total", runbook="fs-clean",
                                                      outcome="succeeded") == 1, 10)

    # released by a human: a new run, its approval by that user, its record naming the held one
    done = cli(project, "approve", held["run_id"], "--output", "json")
    assert done.returncode == 0, done.stderr
    released = [r for r in records(project, "needs-human") if r.get("releases") == held["run_id"]]
    assert len(released) == 1 and released[0]["outcome"] == "succeeded"
    assert [(a["step"], a["by"], a["approved"]) for a in released[0]["approvals"]] == [("confirm", "release", True)]
    assert released[0]["origin"]["alert"]["fingerprint"] == "a7" and released[0]["params"] == {"reason": "disk full on db1"}
    again = cli(project, "approve", held["run_id"])
    assert again.returncode == 65 and f"already approved by" in again.stderr and released[0]["run_id"] in again.stderr
    assert served.stop() == 0
    resolved = [json.loads(line) for line in (project.project().state_dir / "serve" / "journal.jsonl").read_text().splitlines()]
    assert served.log.read_text().count("resolved (runbook fs-clean)") == 1 and resolved


def test_a_full_queue_answers_429_and_a_restart_runs_what_was_accepted(serve: Callable[..., Served],
                                                                       project: DemoProject) -> None:
    """Killed (SIGKILL) with one run going and one queued: after the restart the queued one runs, and the
    one that was running (it ran on, in its own session) is not run again."""
    served = serve("--workers", "1", "--queue-size", "1", "--rate", "100/1m")
    assert served.post(alert("b1", alertname="Slow", instance="web1", pause="3"))[0] == 202
    wait_for("the first run to start", lambda: served.get("/healthz")[2]["busy"] == 1, 20)
    assert served.post(alert("b2", alertname="Slow", instance="web1", pause="0"))[0] == 202
    status, headers, body = served.post(alert("b3", alertname="Slow", instance="web1", pause="0"))
    assert status == 429 and headers["Retry-After"] == "30" and "queue is full" in body["error"]
    assert served.get("/healthz")[2]["queue"] == 1
    served.stop(signal.SIGKILL)

    again = serve("--workers", "1", "--queue-size", "1", "--rate", "100/1m", port=served.port)
    wait_for("both alerts' runs to finish", lambda: {fingerprint_of(r) for r in records(project, "slow")
                                                     if r["outcome"] == "succeeded"} == {"b1", "b2"}, 60)
    assert sorted(fingerprint_of(r) for r in records(project, "slow", finished=False)) == ["b1", "b2"]  # once each
    assert again.post(alert("b2", alertname="Slow", instance="web1", pause="0"))[2]["decided"] == {"duplicate": 1}
    assert again.post(alert("b3", alertname="Slow", instance="web1", pause="0"))[2]["decided"] == {"run": 1}
    wait_for("b3's run", lambda: any(fingerprint_of(r) == "b3" for r in records(project, "slow")), 30)
    assert "accepted alert(s) not finished before the last stop, queued again" in again.log.read_text()
    assert again.stop() == 0


def test_sigterm_drains_runs_then_stops_what_outlives_the_deadline(serve: Callable[..., Served],
                                                                   project: DemoProject) -> None:
    """Two runs going (two runbooks: two locks): the short one finishes within the drain deadline, the long one
    is stopped at it (interrupted, rolled back by the run itself); the server answers 503 meanwhile, exits 0.
    TECHNICIAN_OPS_NOTIFY_URL reaches the runs as for cron: the interrupted one posts its message."""
    import http.server
    import threading

    posted: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    chat = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=chat.serve_forever, daemon=True).start()
    served = serve("--workers", "2", "--rate", "100/1m", "--drain-timeout", "12",
                   env={"TECHNICIAN_OPS_NOTIFY_URL": f"http://127.0.0.1:{chat.server_address[1]}/hook"})
    assert served.post(alert("c1", alertname="Slow", instance="web1", pause="3"),
                       alert("c2", alertname="SlowToo", instance="web2", pause="120"))[0] == 202
    wait_for("both runs to start", lambda: served.get("/healthz")[2]["busy"] == 2, 20)
    wait_for("both runs in their step", lambda: len(records(project, finished=False)) == 2, 20)
    # ...and both steps really sleeping: the drain deadline is measured from here, not from the
    # records (on a loaded machine ansible can take seconds between the two)
    wait_for("both steps sleeping", lambda: {"sleep 3", "sleep 120"} <= descendants(served.proc.pid), 60)
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)

    def refused_while_draining() -> Any:
        answer = served.post(alert("c3", alertname="Slow", instance="web1", pause="0"))
        return answer if answer[0] == 503 else None

    _, headers, _ = wait_for("503 while draining", refused_while_draining, 5)
    assert headers["Retry-After"] == "60" and served.get("/healthz")[2]["status"] == "draining"
    assert served.stop(timeout=60) == 0
    assert time.monotonic() - started < 45
    outcomes = {fingerprint_of(r): r["outcome"] for r in records(project)}
    assert outcomes == {"c1": "succeeded", "c2": "interrupted"}
    assert "drain deadline (12s) passed: stopping 1 run(s)" in served.log.read_text()
    chat.shutdown()
    assert len(posted) == 1 and "slow-too" in posted[0]["text"] and "interrupted" in posted[0]["text"]


def test_a_burst_of_1000_alerts_keeps_memory_and_answers_bounded(serve: Callable[..., Served],
                                                                 project: DemoProject) -> None:
    import threading

    served = serve("--workers", "1", "--queue-size", "8")

    def rss() -> int:
        status = Path(f"/proc/{served.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    served.post(alert("warm", alertname="Twice"))
    before = rss()
    codes: list[int] = []
    slowest: list[float] = []

    def send(start: int) -> None:
        for i in range(start, 1000, 20):
            codes.append(served.post(alert(f"{i:04x}", alertname="DiskFull", instance="web1", mountpoint="/b"))[0])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        t0 = time.monotonic()
        assert served.get("/healthz")[0] == 200
        slowest.append(time.monotonic() - t0)
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert len(codes) == 1000 and set(codes) == {202}
    health = served.get("/healthz")[2]
    assert health["queue"] <= 8 and health["records_waiting"] <= 999
    assert served.metric("technician_ops_serve_alerts_refused_total", reason="rate_limited") == 999
    assert max(slowest) < 5.0  # /healthz answers all along
    assert rss() - before < 40_000, (before, rss())  # kB
    assert served.stop(timeout=90) == 0
    # nothing accepted is lost: every alert has its record, or waits in the journal for the next start
    from technician_ops.serve.journal import Journal

    journal = Journal(project.project().state_dir / "serve")
    waiting = journal.open().pending
    journal.close()
    assert len(records(project)) + len(waiting) == 1000
    assert {p.job["code"] for p in waiting} <= {"rate_limited"}


# -- systemd ----------------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_systemd_unit_verifies_clean(project: DemoProject, tmp_path: Path) -> None:
    tool = tmp_path / "tool bin" / "technician-ops"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\nPYTHONPATH='{REPO}' exec '{sys.executable}' -m technician_ops.cli \"$@\"\n")
    tool.chmod(0o755)
    units = tmp_path / "units"
    done = cli(project, "serve", "--export", "systemd", "--bin", str(tool), "--token-file", str(tmp_path / "token"),
               "--user", "root", "--rate", "3/10m", "--drain-timeout", "90", "-o", str(units))
    assert done.returncode == 0, done.stderr
    unit = (units / "technician-ops-serve.service").read_text()
    assert "KillMode=mixed\n" in unit and "TimeoutStopSec=150s\n" in unit and "User=root\n" in unit
    assert f"--token-file {tmp_path / 'token'}" in unit and TOKEN not in unit
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "technician-ops-serve.service")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout == verify.stderr == "", verify


# -- the real Alertmanager ---------------------------------------------------------------------


def _doc_config() -> dict[str, Any]:
    """docs/serve.md's Alertmanager configuration block, as written there."""
    doc = (REPO / "docs" / "serve.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "webhook_configs" in b]
    assert len(blocks) == 1
    config: dict[str, Any] = yaml.safe_load(blocks[0])
    return config


@pytest.mark.skipif(not shutil.which("prometheus-alertmanager") or not shutil.which("amtool"),
                    reason="Alertmanager not installed (apt-get install prometheus-alertmanager)")
def test_the_real_alertmanager_fires_a_runbook_once(serve: Callable[..., Served], project: DemoProject,
                                                    tmp_path: Path) -> None:
    served = serve("--rate", "10/1m")
    config = _doc_config()
    hook = config["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:9095/hooks/alertmanager"
    assert hook["http_config"]["authorization"]["credentials_file"]
    hook["url"] = f"http://127.0.0.1:{served.port}/hooks/alertmanager"
    hook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "token")
    config["route"].update({"group_wait": "1s", "group_interval": "1s", "repeat_interval": "2s"})
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    am_port = free_port()
    am_log = (tmp_path / "alertmanager.log").open("wb")
    am = subprocess.Popen(["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
                           f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                           "--cluster.listen-address=", "--log.level=warn"],
                          stdout=am_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{am_port}"
    try:
        def ready() -> bool:
            assert am.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", am_port, timeout=2)
                conn.request("GET", "/-/ready")
                return conn.getresponse().status == 200
            except OSError:
                return False

        wait_for("Alertmanager to be ready", ready, 20)
        fire = subprocess.run(["amtool", "alert", "add", "alertname=DiskFull", "instance=web2:9100",
                               "mountpoint=/srv/data", "severity=page", f"--alertmanager.url={url}"],
                              capture_output=True, text=True, timeout=30)
        assert fire.returncode == 0, fire.stderr
        conn = http.client.HTTPConnection("127.0.0.1", am_port, timeout=5)
        conn.request("GET", "/api/v2/alerts")
        [fired] = json.loads(conn.getresponse().read())
        ran = wait_for("the alert's run", lambda: [r for r in records(project, "fs-clean")], 40)
        # wait for Alertmanager to repeat the notification (repeat_interval 2s): not run again
        wait_for("a repeated notification", lambda: served.metric("technician_ops_serve_alerts_duplicate_total") >= 1, 30)
    finally:
        am.terminate()
        am.wait(timeout=20)
        am_log.close()
    assert served.stop() == 0
    assert len(records(project, "fs-clean", finished=False)) == 1
    [record] = ran
    assert record["outcome"] == "succeeded" and record["params"] == {"mountpoint": "/srv/data"}
    assert record["ansible"]["limit"] == "web2"
    alert_ = record["origin"]["alert"]
    assert alert_["fingerprint"] == fired["fingerprint"] and alert_["receiver"] == "technician-ops"
    assert alert_["starts_at"] == fired["startsAt"] or alert_["starts_at"][:19] == fired["startsAt"][:19]
    assert alert_["labels"] == {"alertname": "DiskFull", "instance": "web2:9100", "mountpoint": "/srv/data"}
    assert (project.host_dir("web2") / "cleaned").read_text() == "/srv/data\n"


# -- approvals, through the API a web page uses too ----------------------------------------------


def test_approve_releases_a_held_run_once_and_only_as_it_was_held(project: DemoProject) -> None:
    from technician_ops import api
    from technician_ops.engine.lock import RunLock
    from technician_ops.errors import LockHeld, ParameterError, PastRunError

    proj = project.project()
    detail = json.dumps({"receiver": "ops", "fingerprint": "d1", "labels": {"alertname": "NeedsHuman"}})
    environ = {**os.environ, "TECHNICIAN_OPS_ORIGIN": "alertmanager", "TECHNICIAN_OPS_ORIGIN_DETAIL": detail}
    held = api.hold_run(api.RunRequest("needs-human", {"reason": "r1"}, environ=environ), proj, "held for a test")
    assert held.outcome.value == "awaiting_approval" and int(held.exit_code) == 5

    refused_id = api.refuse_run(api.RunRequest("needs-human", {"reason": "r2"}), proj, "refused for a test")
    with pytest.raises(PastRunError, match="is not awaiting approval \\(it is refused\\)"):
        api.approve_run(proj, refused_id, user="alice")

    lock = RunLock(proj.state_dir / "locks", "needs-human")
    lock.acquire()
    try:
        with pytest.raises(LockHeld):  # skipped before anything ran: it may be approved again
            api.approve_run(proj, held.run_id, user="alice")
    finally:
        lock.release()
    result = api.approve_run(proj, held.run_id, user="bob")
    assert result.outcome.value == "succeeded"
    record = api.show(result.run_id, proj).record or {}
    assert record["releases"] == held.run_id and record["approvals"][0]["user"] == "bob"
    assert record["origin"]["alert"]["fingerprint"] == "d1"
    with pytest.raises(PastRunError, match=f"already approved by bob at .*: run {result.run_id}"):
        api.approve_run(proj, held.run_id, user="alice")

    again = api.hold_run(api.RunRequest("needs-human", {"reason": "r3"}), proj, "held for a test")
    path = proj.runbooks_dir / "needs-human.md"
    path.write_text(path.read_text().replace("Restart it?", "Restart it now?"))
    with pytest.raises(PastRunError, match="changed since run"):
        api.approve_run(proj, again.run_id, user="alice")
    with pytest.raises(ParameterError, match="'nowhere' matches no host"):
        api.hold_run(api.RunRequest("needs-human", {"reason": "r4"}, limit="nowhere"), proj, "held for a test")
    assert [r["outcome"] for r in api.history(proj, "needs-human", limit=1)] == ["refused"]  # checked when held

    bad = cli(project, "run", "needs-human", "-p", "reason=x", "--run-id", "../../etc/passwd", timeout=60)
    assert bad.returncode == 64 and "is not a run id (a lowercase UUID)" in bad.stderr


def test_the_web_view_is_served_and_releases_a_held_run_for_a_signed_in_user(serve: Callable[..., Served],
                                                                               project: DemoProject, tmp_path: Path) -> None:
    import base64
    from urllib.parse import urlencode

    from technician_ops import api
    from technician_ops.serve.ui import hash_password

    users = tmp_path / "web-users"
    users.write_text(f"alice:{hash_password('correct horse')}\n")
    users.chmod(0o600)
    held = api.hold_run(api.RunRequest("needs-human", {"reason": "seen on the web"}), project.project(), "held for a test")
    served = serve("--web-users-file", str(users))
    status, headers, _ = served.get("/")
    assert status == 302 and headers["Location"] == "/ui/"
    status, headers, _ = served.get("/ui/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")  # with users, every page asks
    basic = lambda cred: {"Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}  # noqa: E731
    assert served.request("GET", "/ui/", headers=basic(f"alice:{TOKEN}"))[0] == 401  # the webhook's token is no password
    assert served.request("GET", "/ui/", headers=basic("mallory:correct horse"))[0] == 401
    alice = basic("alice:correct horse")
    status, headers, page = served.request("GET", "/ui/", headers=alice)
    assert status == 200 and held.run_id in page and headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert served.request("GET", "/ui/", headers={**alice, "Host": "evil.example:9095"})[0] == 421  # DNS rebinding
    page = served.request("GET", f"/ui/runs/{held.run_id}", headers=alice)[2]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{served.port}"}
    body = urlencode({"csrf": csrf.group(1)}).encode()
    assert served.request("POST", f"/ui/runs/{held.run_id}/approve", body,
                          {**alice, **form, "Origin": "http://evil.example"})[0] == 403
    status, headers, _ = served.request("POST", f"/ui/runs/{held.run_id}/approve", body, {**alice, **form})
    assert status == 303 and headers["Location"].startswith("/ui/runs/")
    released = wait_for("the release to finish", lambda: [r for r in records(project, "needs-human")
                                                          if r.get("releases") == held.run_id], 60)
    assert released[0]["outcome"] == "succeeded" and headers["Location"] == f"/ui/runs/{released[0]['run_id']}"
    assert [a["user"] for a in released[0]["approvals"]] == [f"{api_user()} (via web:alice)"]
    assert served.request("POST", f"/ui/runs/{held.run_id}/approve", body, {**alice, **form})[0] == 409


def test_a_browser_cannot_post_alerts_to_the_hook(serve: Callable[..., Served]) -> None:
    served = serve()
    body = json.dumps(payload(alert("cs", alertname="NodeFilesystemSpaceFillingUp"))).encode()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert served.request("POST", "/hooks/alertmanager", body, {**auth, "Content-Type": "text/plain"})[0] == 415
    assert served.request("POST", "/hooks/alertmanager", body, {**auth, "Content-Type": "application/json",
                                                               "Origin": "http://evil.example"})[0] == 403
    assert served.request("POST", "/hooks/alertmanager", body, {**auth, "Content-Type": "application/json",
                                                               "Sec-Fetch-Site": "cross-site"})[0] == 403


def api_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
