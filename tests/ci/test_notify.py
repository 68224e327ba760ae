"""notify() against a real HTTP server on 127.0.0.1 (http.server in a thread); payloads checked with Slack's SDK.

slack_sdk (a test dependency only) parses the Block Kit blocks into its own
models and validates them: block types, required keys, Slack's length limits.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from technician_ops.engine.redact import Redactor
from technician_ops.events import Bus, Event, Kind, Outcome
from technician_ops.outputs.notify import message_for, notify, should_notify


class Hook:
    """A webhook receiver that answers with a scripted list of status codes (the last one repeats)."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        self.statuses = statuses
        self.headers = headers or {}
        self.received: list[tuple[str, str, dict]] = []  # (path, content-type, body)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                hook.received.append((self.path, self.headers.get("Content-Type"), body))
                status = hook.statuses[min(len(hook.received), len(hook.statuses)) - 1]
                self.send_response(status)
                for key, value in hook.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/SeCrEtToKeN"


@pytest.fixture
def hook_factory() -> Iterator:
    hooks: list[Hook] = []

    def make(statuses: list[int], headers: dict[str, str] | None = None) -> Hook:
        hook = Hook(statuses, headers)
        hook.thread.start()
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.server.shutdown()
        hook.server.server_close()
        hook.thread.join(5)


RUN_END = {"run_id": "01HX-RUN", "outcome": "rolled_back", "exit_code": 3, "duration": 12.34,
           "failed_step": "migrate", "failed_hosts": ["db1", "db2"]}


def slack_blocks(payload: dict[str, Any]) -> list[Block]:
    """The payload's blocks as Slack's SDK reads them; any unknown key or broken limit fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # slack_sdk warns about keys it does not know
        blocks = [Block.parse(b) for b in payload["blocks"]]
        for block in blocks:
            assert block is not None
            block.validate_json()
    assert [b.to_dict() for b in blocks] == payload["blocks"]  # nothing dropped in the reading
    return blocks


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_success_posts_the_slack_payload(hook_factory) -> None:
    hook = hook_factory([200])
    payload = message_for(RUN_END, "db-migrate")
    result = notify(hook.url, payload)
    assert result.ok and result.attempts == 1 and result.error is None
    path, ctype, body = hook.received[0]
    assert path == "/services/T000/B000/SeCrEtToKeN" and ctype == "application/json"
    assert body == payload
    assert "db-migrate" in body["text"] and "migrate" in body["text"] and "db1, db2" in body["text"]
    assert "01HX-RUN" in body["text"]
    fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
    assert fields["Failed step"] == "migrate" and fields["Failed hosts"] == "db1, db2"
    assert fields["Run id"] == "01HX-RUN" and fields["Outcome"] == "rolled_back"


def test_block_kit_header_section_context(hook_factory) -> None:
    hook = hook_factory([200])
    assert notify(hook.url, message_for(RUN_END, "db-migrate")).ok
    body = hook.received[0][2]
    header, section, context = slack_blocks(body)
    assert (header.type, section.type, context.type) == ("header", "section", "context")
    assert header.text.type == "plain_text" and header.text.text == "Runbook failed and was rolled back"
    assert section.text.text == "*db-migrate* failed and was rolled back at step migrate on db1, db2"
    assert [f.text for f in section.fields] == ["*Outcome*\nrolled_back", "*Exit code*\n3", "*Failed step*\nmigrate",
                                                "*Failed hosts*\ndb1, db2", "*Duration*\n12.3s"]
    [run] = context.elements
    assert "01HX-RUN" in run.text and "technician-ops history db-migrate" in run.text
    assert body["text"].startswith("technician-ops: runbook db-migrate failed and was rolled back")  # the fallback


def test_values_from_the_run_cannot_ping_or_link() -> None:
    """A runbook, step or host name is data: Slack must show ``<!channel>``, not notify the channel."""
    run_end = {**RUN_END, "run_id": "r<@U0>", "failed_step": "<https://evil.example|click>",
               "failed_hosts": ["db&1", "<!here>"]}
    payload = message_for(run_end, "<!channel>")
    texts = list(strings(payload))
    assert not [t for t in texts if "<" in t or ">" in t]
    assert "&lt;!channel&gt;" in payload["text"] and "&lt;!here&gt;" in payload["text"]
    assert "db&amp;1" in payload["text"] and "r&lt;@U0&gt;" in payload["text"]
    header, section, context = slack_blocks(payload)
    assert section.text.text.startswith("*&lt;!channel&gt;* failed")
    assert "&lt;https://evil.example|click&gt;" in section.text.text
    fields = {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}
    assert fields["Failed hosts"] == "db&amp;1, &lt;!here&gt;"


def test_a_thousand_hosts_stay_within_slacks_limits() -> None:
    hosts = [f"web-{i:04d}.example.internal" for i in range(1000)]
    payload = message_for({**RUN_END, "failed_hosts": hosts}, "&" * 1000)
    slack_blocks(payload)  # validate_json: a field over 2,000 characters or a section over 3,000 fails here
    assert "web-0000.example.internal" in payload["text"] and "web-0999" not in payload["text"]


def test_secrets_never_reach_the_payload() -> None:
    """The payload is built from the bus's RUN_END, which the redactor has already cleaned."""
    ends: list[dict[str, Any]] = []

    class Keep:
        def handle(self, event: Event) -> None:
            if event.kind is Kind.RUN_END:
                ends.append(dict(event.data))

    bus = Bus([Keep()], redactor=Redactor(["hunter2-secret"]))
    bus.emit(Kind.RUN_END, run_id="r1", outcome="failed", exit_code=1, duration=1.0,
             failed_step="login-hunter2-secret", failed_hosts=["db1"])
    payload = message_for(ends[0], "db-migrate")
    assert "hunter2-secret" not in json.dumps(payload)
    assert "Failed step" in {f["title"] for f in payload["attachments"][0]["fields"]}


def test_500_then_200_is_ok_after_two_attempts(hook_factory) -> None:
    hook = hook_factory([500, 200])
    result = notify(hook.url, {"text": "x"}, backoff=0.01)
    assert (result.ok, result.attempts) == (True, 2)
    assert len(hook.received) == 2


def test_always_500_gives_up_without_raising(hook_factory) -> None:
    hook = hook_factory([500])
    started = time.monotonic()
    result = notify(hook.url, {"text": "x"}, retries=3, backoff=0.02)
    assert (result.ok, result.attempts) == (False, 4)
    assert len(hook.received) == 4
    assert result.error is not None and "500" in result.error
    assert "SeCrEtToKeN" not in result.error
    assert time.monotonic() - started >= 0.02 + 0.04 + 0.08  # exponential backoff really waited


def test_429_is_retried_and_honours_retry_after(hook_factory) -> None:
    hook = hook_factory([429, 200], headers={"Retry-After": "0.3"})
    started = time.monotonic()
    result = notify(hook.url, {"text": "x"}, backoff=0.01)
    assert (result.ok, result.attempts) == (True, 2)
    assert time.monotonic() - started >= 0.3


def test_4xx_is_not_retried(hook_factory) -> None:
    hook = hook_factory([404])
    result = notify(hook.url, {"text": "x"}, backoff=0.01)
    assert (result.ok, result.attempts) == (False, 1)
    assert result.error == "HTTP 404 Not Found"


def test_connection_refused_is_not_ok_and_does_not_raise() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    result = notify(f"http://127.0.0.1:{port}/hook/SeCrEtToKeN", {"text": "x"}, retries=2, backoff=0.01)
    assert (result.ok, result.attempts) == (False, 3)
    assert "cannot connect" in (result.error or "") and "SeCrEtToKeN" not in (result.error or "")


def test_timeout_is_retried_then_gives_up() -> None:
    with socket.socket() as server:  # accepts, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
        result = notify(url, {"text": "x"}, retries=1, backoff=0.01, timeout=0.2)
    assert (result.ok, result.attempts) == (False, 2)
    assert "timed out" in (result.error or "")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "not a url", "ftp://127.0.0.1/x", ""])
def test_bad_urls_never_raise(url: str) -> None:
    result = notify(url, {"text": "x"})
    assert not result.ok and result.error


def test_should_notify_only_for_outcomes_needing_a_human() -> None:
    assert {o for o in Outcome if should_notify(o)} == {
        Outcome.FAILED, Outcome.ROLLED_BACK, Outcome.ROLLBACK_FAILED, Outcome.INTERRUPTED}
    assert should_notify("rollback_failed") and not should_notify("succeeded")


def test_message_without_failed_step() -> None:
    payload = message_for({"run_id": "r", "outcome": "interrupted", "exit_code": 130, "failed_step": None,
                           "failed_hosts": []}, "rb")
    assert payload["text"].startswith("technician-ops: runbook rb was interrupted (run r")
    assert "Failed step" not in {f["title"] for f in payload["attachments"][0]["fields"]}
    json.dumps(payload)
