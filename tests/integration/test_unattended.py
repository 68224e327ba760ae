"""Unattended runs from the CLI: locks, JUnit, metrics, notifications."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from technician_ops.audit import open_store
from technician_ops.errors import ExitCode

pytestmark = pytest.mark.integration


def cli(demo, *args: str, **kw):  # type: ignore[no-untyped-def]
    return subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, **kw)


def test_second_run_of_a_locked_runbook_exits_75_at_once(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("slow", "---\nhosts: web1\n---\n\n```yaml {name=nap kind=check}\n- ansible.builtin.command: sleep 4\n```\n")
    first = cli(demo, "run", "slow", "--output", "json")
    assert first.stdout is not None
    first.stdout.readline()  # run_start: the first run holds the lock
    started = time.monotonic()
    second = cli(demo, "run", "slow")
    _out, err = second.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert second.returncode == ExitCode.TEMPFAIL, err
    assert "lock 'slow' is held" in err
    assert elapsed < 10  # process start included; the lock check itself does not wait
    first.communicate(timeout=120)
    assert first.returncode == 0
    store = open_store(None, demo.root)
    outcomes = sorted(r["outcome"] for r in store.history("slow"))
    assert outcomes == ["skipped", "succeeded"]
    store.close()


def test_junit_metrics_and_notification_on_rollback(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    received: list[dict] = []
    answers = [500, 200]

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(answers.pop(0) if answers else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        junit, metrics = tmp_path / "junit.xml", tmp_path / "tops.prom"
        proc = cli(demo, "run", "release-with-healthcheck", "-p", "release=r5", "--output", "json", "--junit", str(junit),
                   "--metrics-file", str(metrics), "--notify", f"http://127.0.0.1:{server.server_port}/hook")
        proc.communicate(timeout=180)
    finally:
        server.shutdown()
    assert proc.returncode == ExitCode.ROLLED_BACK
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["health-check"].find("failure") is not None
    assert cases["ship"].find("failure") is None
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.read_text()) for s in family.samples}
    key = ("technician_ops_last_run_outcome", (("check", "false"), ("outcome", "rolled_back"), ("runbook", "release-with-healthcheck")))
    assert samples[key] == 1
    assert samples[("technician_ops_last_run_exit_code", (("check", "false"), ("runbook", "release-with-healthcheck")))] == 3
    assert len(received) == 2  # 500, then retried to 200
    assert "rolled_back" in json.dumps(received[-1]) and "health-check" in json.dumps(received[-1])


def test_schedule_export_lists_scheduled_runbooks(demo) -> None:  # type: ignore[no-untyped-def]
    proc = cli(demo, "schedule", "export")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert fields[:5] == ["15", "3", "*", "*", "*"]
    assert "TECHNICIAN_OPS_ORIGIN=cron" in fields[5] and "run disk-usage-check" in fields[5]
