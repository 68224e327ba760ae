"""Alertmanager's webhook payload, version 4, checked before anything reads it.

Alertmanager POSTs (``webhook_config``; its notify/webhook package)::

    {"version": "4", "groupKey": "...", "truncatedAlerts": 0, "status": "firing|resolved",
     "receiver": "...", "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": "...",
     "alerts": [{"status": "firing|resolved", "labels": {...}, "annotations": {...},
                 "startsAt": "RFC 3339", "endsAt": "RFC 3339", "generatorURL": "...",
                 "fingerprint": "hex"}]}

Everything in it is data from the network.  ``parse`` takes exactly this
shape (a missing ``truncatedAlerts``, as older Alertmanagers send, is 0) and
raises ``PayloadError`` naming the first field that is not, so a bad request
is a 400 that says why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

VERSION = "4"
STATUSES = ("firing", "resolved")
MAX_ALERTS = 10_000
MAX_TEXT = 64 * 1024  # characters of one string field (a label value, an annotation, a URL)
MAX_LABELS = 256  # per alert
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_FINGERPRINT = re.compile(r"[0-9a-f]{1,64}")


class PayloadError(ValueError):
    """The body is not an Alertmanager webhook payload of version 4: the message says which field."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str

    @property
    def key(self) -> str:
        """What identifies one firing of one alert: a repeated notification carries the same key."""
        return f"{self.fingerprint}@{self.starts_at}"


@dataclass(frozen=True)
class Notification:
    receiver: str
    status: str
    group_key: str
    truncated: int
    alerts: tuple[Alert, ...]


def parse(body: bytes) -> Notification:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise PayloadError("the body is not a JSON object")
    if data.get("version") != VERSION:
        raise PayloadError(f"version must be \"{VERSION}\" (Alertmanager's webhook payload), got "
                           f"{str(data.get('version'))[:40]!r}")
    status = _choice(data, "status", "")
    receiver = _text(data, "receiver", "")
    group_key = _text(data, "groupKey", "")
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise PayloadError("truncatedAlerts must be a whole number")
    _text(data, "externalURL", "")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        _mapping(data, key, "")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts must be a list")
    if len(alerts) > MAX_ALERTS:
        raise PayloadError(f"more than {MAX_ALERTS} alerts in one notification")
    return Notification(receiver, status, group_key, truncated,
                        tuple(_alert(item, f"alerts[{i}].") for i, item in enumerate(alerts)))


def _alert(item: Any, where: str) -> Alert:
    if not isinstance(item, dict):
        raise PayloadError(f"{where[:-1]} must be an object")
    status = _choice(item, "status", where)
    labels = _mapping(item, "labels", where)
    if not labels:
        raise PayloadError(f"{where}labels must not be empty")
    if len(labels) > MAX_LABELS:
        raise PayloadError(f"{where}labels: more than {MAX_LABELS} labels")
    _mapping(item, "annotations", where, required=False)
    starts, ends = _time(item, "startsAt", where), _time(item, "endsAt", where)
    _text(item, "generatorURL", where, required=False)
    fingerprint = _text(item, "fingerprint", where)
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise PayloadError(f"{where}fingerprint must be hexadecimal (Alertmanager's alert fingerprint)")
    return Alert(status, labels, starts, ends, fingerprint)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _text(data: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{where}{key} must be a string")
    if len(value) > MAX_TEXT:
        raise PayloadError(f"{where}{key} is longer than {MAX_TEXT} characters")
    return value


def _choice(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value not in STATUSES:
        raise PayloadError(f"{where}{key} must be one of {', '.join(STATUSES)}")
    return str(value)


def _time(data: dict[str, Any], key: str, where: str) -> str:
    value = _text(data, key, where)
    if not _TIME.fullmatch(value):
        raise PayloadError(f"{where}{key} must be an RFC 3339 time")
    return value


def _mapping(data: dict[str, Any], key: str, where: str, *, required: bool = True) -> dict[str, str]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{where}{key} must be an object of strings")
    for name, text in value.items():
        if not name or not isinstance(text, str) or len(name) > 1024 or len(text) > MAX_TEXT:
            raise PayloadError(f"{where}{key} must map names to strings (at most {MAX_TEXT} characters)")
    return dict(value)
