"""One alert -> at most one runbook, decided before anything is written or run.

For each firing alert of a notification, in order:

1. the runbooks with a trigger whose ``match`` it meets; none: ``no_trigger``
   (logged and counted, not journaled: most alerts are not ours);
2. its key (fingerprint + startsAt) was decided before: ``duplicate``
   (Alertmanager repeats notifications; the first one decided);
3. two runbooks or more: refused, ``ambiguous`` (recorded for each);
4. the trigger's templates cannot give the run its inputs: refused, ``labels``;
5. the runbook was started ``count`` times in the last ``period``: refused,
   ``rate_limited``;
6. the runbook has an approve step: ``hold`` (recorded as awaiting_approval);
7. else ``run``.

A resolved alert that a trigger matches is ``resolved``: journaled and
logged, never run; its key is forgotten.  ``decide`` changes nothing;
``commit`` applies a decided notification to the rate windows once it is
journaled, so a refused request (queue full) leaves no trace.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from technician_ops.errors import ParameterError
from technician_ops.runbook.model import Runbook, Trigger
from technician_ops.runbook.triggers import matches, render
from technician_ops.serve.alerts import Alert, Notification

# Why an alert was not run, as the metrics label them.
REASONS = ("no_trigger", "ambiguous", "labels", "rate_limited")
MAX_DETAIL_VALUE = 1024  # characters of one label value in the record's origin (the run gets it whole)
MAX_DETAIL = 12 * 1024  # the origin's alert, as JSON (engine/origin.py takes at most 16 KiB)


@dataclass
class Decision:
    alert: Alert
    action: str  # run, hold, refuse, duplicate, no_trigger, resolved, ignored
    runbooks: list[str] = field(default_factory=list)
    code: str | None = None  # one of REASONS for a refusal
    reason: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    limit: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # the labels that decided it

    def jobs(self, receiver: str) -> list[dict[str, Any]]:
        """What the workers do for it: one job per runbook concerned (none for duplicates and strangers)."""
        if self.action not in ("run", "hold", "refuse"):
            return []
        labels = {k: v[:MAX_DETAIL_VALUE] for k, v in self.labels.items()}
        if len(json.dumps(labels)) > MAX_DETAIL:  # many long labels read: the record keeps each one's start
            labels = {k: v[:64] for k, v in labels.items()}
        return [{"kind": self.action, "runbook": name, "params": dict(self.params), "limit": self.limit,
                 "code": self.code, "reason": self.reason,
                 "detail": {"receiver": receiver[:256], "fingerprint": self.alert.fingerprint,
                            "starts_at": self.alert.starts_at[:64], "runbook": name, "labels": labels}}
                for name in self.runbooks]


class RateLimit:
    """At most ``count`` starts of one runbook in any ``period`` seconds (a sliding window)."""

    def __init__(self, count: int, period: float) -> None:
        self.count, self.period = count, period
        self._starts: dict[str, collections.deque[float]] = {}

    def used(self, runbook: str, now: float) -> int:
        window = self._starts.get(runbook)
        if window is None:
            return 0
        while window and now - window[0] >= self.period:
            window.popleft()
        if not window:
            del self._starts[runbook]
            return 0
        return len(window)

    def take(self, runbook: str, now: float) -> None:
        self._starts.setdefault(runbook, collections.deque()).append(now)

    def describe(self) -> str:
        return f"{self.count}/{_duration(self.period)}"


class Dispatcher:
    def __init__(self, runbooks: Callable[[], list[Runbook]], seen: Callable[[str], bool], rate: RateLimit,
                 approval_steps: Callable[[Runbook], list[str]]) -> None:
        self.runbooks, self.seen, self.rate, self.approval_steps = runbooks, seen, rate, approval_steps

    def decide(self, notification: Notification, now: float) -> list[Decision]:
        table = self.runbooks()
        decided: set[str] = set()
        taken: collections.Counter[str] = collections.Counter()
        out: list[Decision] = []
        for alert in notification.alerts:
            found = _matching(table, alert.labels)
            if alert.status == "resolved":
                out.append(Decision(alert, "resolved" if found else "ignored", [rb.name for rb, _ in found]))
                continue
            if not found:
                out.append(Decision(alert, "no_trigger", code="no_trigger",
                                    reason="no runbook's trigger matches this alert"))
                continue
            names = [rb.name for rb, _ in found]
            if alert.key in decided or self.seen(alert.key):
                out.append(Decision(alert, "duplicate", names))
                continue
            decided.add(alert.key)
            out.append(self._one(alert, found, now, taken))
        return out

    def _one(self, alert: Alert, found: list[tuple[Runbook, Trigger]], now: float,
             taken: collections.Counter[str]) -> Decision:
        names = [rb.name for rb, _ in found]
        if len(found) > 1:
            labels = {k: alert.labels[k] for rb, t in found for k in t.match}
            return Decision(alert, "refuse", names, "ambiguous",
                            f"the alert matches the triggers of runbooks {', '.join(names)}: ambiguous, none runs "
                            "(make their match labels exclusive)", labels=dict(sorted(labels.items())))
        runbook, trigger = found[0]
        try:
            rendered = render(trigger, alert.labels)
        except ParameterError as exc:
            return Decision(alert, "refuse", names, "labels", f"trigger at line {trigger.line}: {exc.message}",
                            labels={k: alert.labels[k] for k in sorted(trigger.match)})
        decision = Decision(alert, "run", names, params=rendered.params, limit=rendered.limit, labels=rendered.labels)
        if self.rate.used(runbook.name, now) + taken[runbook.name] >= self.rate.count:
            decision.action, decision.code = "refuse", "rate_limited"
            decision.reason = (f"runbook {runbook.name} was started {self.rate.count} time(s) in the last "
                               f"{_duration(self.rate.period)} (--rate {self.rate.describe()}): not started again")
            return decision
        taken[runbook.name] += 1
        steps = self.approval_steps(runbook)
        if steps:
            decision.action = "hold"
            decision.reason = f"step(s) {', '.join(steps)} need approval and nobody is there to give it: held"
        return decision

    def commit(self, decisions: Iterable[Decision], now: float) -> None:
        for decision in decisions:
            if decision.action in ("run", "hold"):
                self.rate.take(decision.runbooks[0], now)


def _matching(table: list[Runbook], labels: dict[str, str]) -> list[tuple[Runbook, Trigger]]:
    """Each runbook with a trigger the alert meets, with its first such trigger."""
    found = []
    for runbook in table:
        trigger = next((t for t in runbook.triggers if t.source == "alertmanager" and matches(t, labels)), None)
        if trigger is not None:
            found.append((runbook, trigger))
    return found


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
