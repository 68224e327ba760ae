"""A chat message when a run needs a human: Slack-compatible incoming webhooks.

Slack shows the message's Block Kit ``blocks``; Mattermost, Rocket.Chat and
most chat bridges accept the same POST and show its ``text`` and legacy
``attachments`` (see ``message_for``).  A notification is best effort
by design: ``notify`` never raises and its result never changes the run's
outcome or exit code; the caller reports a failed notification as a notice.

The webhook URL is a credential (whoever has it can post), so it never
appears in ``NotifyResult.error`` or anywhere else this module produces.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from technician_ops.events import Outcome

NOTIFY_OUTCOMES = frozenset({Outcome.FAILED.value, Outcome.ROLLED_BACK.value, Outcome.ROLLBACK_FAILED.value,
                             Outcome.INTERRUPTED.value})
_COLOR = {"failed": "danger", "rolled_back": "warning", "rollback_failed": "danger", "interrupted": "danger",
          "succeeded": "good"}
_HEADLINE = {
    "failed": "failed; nothing had changed",
    "rolled_back": "failed and was rolled back",
    "rollback_failed": "failed and its rollback failed too: a human is needed",
    "interrupted": "was interrupted",
    "succeeded": "succeeded",
}
MAX_VALUE = 300  # characters of one run value in the message; escaped, at most 5x that (``&amp;``)
MAX_RETRY_AFTER = 30.0  # seconds: a 429's Retry-After beyond this is not worth holding a run's exit for


@dataclass(frozen=True)
class NotifyResult:
    ok: bool
    attempts: int
    error: str | None = None


def should_notify(outcome: Outcome | str) -> bool:
    """Only outcomes someone has to look at; success and skips stay quiet."""
    return Outcome(outcome).value in NOTIFY_OUTCOMES


def message_for(run_end: Mapping[str, Any], runbook: str) -> dict[str, Any]:
    """The webhook payload for a RUN_END event's data (already redacted by the bus).

    One message in three renderings: Block Kit ``blocks`` (what Slack shows);
    ``text``, which Slack requires beside blocks as the fallback for
    notifications and screen readers; and the legacy ``attachments``, which
    Mattermost, Rocket.Chat and other Slack-compatible receivers still render
    while they ignore blocks.  Every value taken from the run (runbook, step,
    host names, run id) is escaped for Slack's markup, so a runbook named
    ``<!channel>`` is shown, never obeyed.
    """
    outcome = str(run_end.get("outcome", "unknown"))
    run_id = _value(str(run_end.get("run_id") or ""))
    name = _value(runbook)
    headline = _value(_HEADLINE.get(outcome, outcome))
    failed_step = _value(str(run_end.get("failed_step") or ""))
    hosts = _value(", ".join(str(h) for h in run_end.get("failed_hosts") or []))
    fields = [("Outcome", _value(outcome)), ("Exit code", _value(str(run_end.get("exit_code", ""))))]
    if failed_step:
        fields.append(("Failed step", failed_step))
    if hosts:
        fields.append(("Failed hosts", hosts))
    if run_end.get("duration") is not None:
        fields.append(("Duration", f"{float(run_end['duration']):.1f}s"))
    where = (f" at step {failed_step}" if failed_step else "") + (f" on {hosts}" if hosts else "")
    lookup = f"`technician-ops history {name}`"
    text = f"technician-ops: runbook {name} {headline}{where} (run {run_id}; {lookup})"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(f"Runbook {headline}", 150)}},
        {"type": "section", "text": _mrkdwn(_clip(f"*{name}* {headline}{where}", 3000)),
         "fields": [_mrkdwn(f"*{title}*\n{value}") for title, value in fields]},
        {"type": "context", "elements": [_mrkdwn(f"run {run_id} · {lookup}")]},
    ]
    legacy = [{"title": title, "value": value, "short": True} for title, value in fields]
    legacy.append({"title": "Run id", "value": run_id, "short": False})
    return {
        "text": text,
        "blocks": blocks,
        "attachments": [{"color": _COLOR.get(outcome, "danger"), "fallback": text, "fields": legacy,
                         "footer": "technician-ops", "ts": int(time.time())}],
    }


def _value(raw: str) -> str:
    """A value from the run as Slack text: clipped (Slack caps a field at 2,000 characters), then escaped."""
    return _escape(_clip(raw, MAX_VALUE))


def _escape(text: str) -> str:
    """Slack's three escapes: ``<`` would open a mention (``<!channel>``) or a link, ``&`` an entity.

    ``*``, ``_`` and backquotes are left alone: at worst they restyle a name, they cannot address anyone.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def notify(url: str, payload: Mapping[str, Any], *, retries: int = 4, backoff: float = 0.5, timeout: float = 5,
           sleep: Callable[[float], None] = time.sleep) -> NotifyResult:
    """POST ``payload`` as JSON; retry connection errors, 5xx and 429 with exponential backoff.

    At most ``1 + retries`` attempts, waiting ``backoff * 2**n`` between them
    (or a 429's Retry-After, capped).  Never raises.
    """
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        return NotifyResult(False, 0, "the notify URL must be http:// or https://")
    try:
        body = json.dumps(payload, default=str).encode("utf-8")
    except (TypeError, ValueError) as exc:
        return NotifyResult(False, 0, f"payload is not JSON: {exc}")
    attempts = 0
    error: str | None = None
    for attempt in range(max(0, retries) + 1):
        attempts = attempt + 1
        wait = backoff * (2 ** attempt)
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "technician-ops"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
                response.read(65536)
            return NotifyResult(True, attempts, None)
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
            exc.close()
            if exc.code != 429 and exc.code < 500:
                return NotifyResult(False, attempts, error)  # the request itself is wrong: retrying cannot help
            if exc.code == 429:
                wait = max(wait, _retry_after(exc.headers.get("Retry-After")))
        except urllib.error.URLError as exc:
            error = f"cannot connect: {_reason(exc.reason)}"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, bad status lines
            error = f"cannot connect: {type(exc).__name__}: {_reason(exc)}"
        except Exception as exc:  # noqa: BLE001 - the contract: a notification never breaks a run
            return NotifyResult(False, attempts, _scrub(f"unexpected {type(exc).__name__}", url))
        error = _scrub(error, url)
        if attempt < retries:
            sleep(min(wait, MAX_RETRY_AFTER))
    return NotifyResult(False, attempts, error)


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 0), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0  # an HTTP-date: fall back to our own backoff


def _reason(reason: object) -> str:
    return str(reason)[:200]


def _scrub(text: str, url: str) -> str:
    """Error texts of urllib/http.client can quote the URL or parts of it: the webhook token must not leak."""
    parts = urllib.parse.urlsplit(url)
    for piece in sorted({url, parts.netloc, parts.path, parts.query, *parts.path.split("/")}, key=len, reverse=True):
        if len(piece) >= 4:
            text = text.replace(piece, "…")
    return text
