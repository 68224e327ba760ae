"""The one cron grammar: what ``schedule:`` accepts, when it fires, and its systemd form.

Five numeric fields (``*``, numbers, ``a-b`` ranges, ``/n`` steps, comma
lists; minute hour day-of-month month day-of-week) or an @alias.  Lint
validates with it, ``schedule list`` asks it for fire times (croniter), and
``schedule export --format systemd`` for the equivalent ``OnCalendar=``.
"""

from __future__ import annotations

import datetime as dt
import re

from technician_ops.errors import ScheduleError

_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
ALIASES: dict[str, str | None] = {  # cron alias -> systemd OnCalendar (None: no timer equivalent)
    "@hourly": "*-*-* *:00:00",
    "@daily": "*-*-* 00:00:00",
    "@midnight": "*-*-* 00:00:00",
    "@weekly": "Sun *-*-* 00:00:00",  # cron's week starts on Sunday; systemd's "weekly" is Monday
    "@monthly": "*-*-01 00:00:00",
    "@yearly": "*-01-01 00:00:00",
    "@annually": "*-01-01 00:00:00",
    "@reboot": None,
}
_FIRST = {"minute": 0, "hour": 0, "day": 1, "month": 1}



def cron_problem(expr: str) -> str | None:
    """None if ``expr`` is a valid 5-field cron expression (or @alias)."""
    expr = expr.strip()
    if expr in ALIASES:
        return None
    fields = expr.split()
    if len(fields) != 5:
        return f"expected 5 fields (minute hour day month weekday), got {len(fields)}"
    names = ("minute", "hour", "day of month", "month", "day of week")
    for field, (lo, hi), label in zip(fields, _CRON_RANGES, names):
        if not _CRON_FIELD.match(field):
            return f"bad {label} field {field!r}"
        for number in re.findall(r"\d+", re.sub(r"/\d+", "", field)):
            if not lo <= int(number) <= hi:
                return f"{label} {number} out of range {lo}-{hi}"
    return None


def on_calendar(expr: str) -> list[str]:
    """systemd OnCalendar= value(s) equivalent to a cron expression.

    Two values when both day-of-month and day-of-week are restricted: cron
    fires when EITHER matches, a single OnCalendar needs both.
    """
    expr = expr.strip()
    problem = cron_problem(expr)
    if problem:
        raise ScheduleError(f"invalid schedule {expr!r}: {problem}")
    if expr.startswith("@"):
        calendar = ALIASES.get(expr)
        if calendar is None:
            raise ScheduleError(f"schedule {expr!r} has no systemd timer equivalent", hint="use the crontab export")
        return [calendar]
    minute, hour, dom, month, dow = expr.split()
    time_part = f"{_field(hour, 'hour')}:{_field(minute, 'minute')}:00"
    date_dom = f"*-{_field(month, 'month')}-{_field(dom, 'day')}"
    date_any = f"*-{_field(month, 'month')}-*"
    days = _weekdays(dow)
    # Vixie cron ORs the two day fields only when neither starts with "*" (so "*/2" counts as unrestricted).
    if not dom.startswith("*") and not dow.startswith("*"):
        return [f"{days} {date_any} {time_part}", f"{date_dom} {time_part}"]
    if days is None:
        return [f"{date_dom} {time_part}"]
    return [f"{days} {date_dom} {time_part}"]  # both must match (dom may be "*")


def _field(field: str, unit: str) -> str:
    """One numeric cron field in systemd syntax: a-b -> a..b, */n -> FIRST/n, lists kept."""
    parts = []
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            text = "*" if not step else f"{_FIRST[unit]:02d}"
        elif "-" in base:
            lo, hi = base.split("-")
            if int(lo) > int(hi):
                raise ScheduleError(f"{unit} range {base!r} runs backwards: no timer equivalent")
            text = f"{int(lo):02d}..{int(hi):02d}"
        else:  # cron "5/15" means 5-MAX/15, and so does systemd's "05/15"
            text = f"{int(base):02d}"
        parts.append(f"{text}/{int(step)}" if step else text)
    return ",".join(parts)


def _weekdays(field: str) -> str | None:
    """A day-of-week field as a list of systemd day names; None for "*" (every day)."""
    if field == "*":
        return None
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            lo, hi = 0, 6
        elif "-" in base:
            lo, hi = (int(x) for x in base.split("-"))
        else:
            lo = int(base)
            hi = 7 if step_text else lo
        if lo > hi:
            raise ScheduleError(f"day-of-week range {base!r} runs backwards: no timer equivalent")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days, key=lambda d: (d + 6) % 7))  # Mon first, like systemd


def next_fire_times(expr: str, n: int = 3, now: dt.datetime | None = None) -> list[dt.datetime]:
    """The next ``n`` times ``expr`` fires after ``now`` (default: now, local time)."""
    from croniter import croniter

    expr = expr.strip()
    problem = cron_problem(expr)
    if problem:
        raise ScheduleError(f"invalid schedule {expr!r}: {problem}")
    if expr == "@reboot":
        raise ScheduleError("@reboot has no fire times: it runs once at boot")
    base = now or dt.datetime.now().astimezone()
    it = croniter(expr, base)
    return [it.get_next(dt.datetime) for _ in range(n)]
