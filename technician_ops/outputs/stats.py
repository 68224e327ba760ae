"""Operational figures per runbook, from the audit store: ``technician-ops stats``.

What each figure means (docs/postmortem.md says the same for people):

- ``runs``: every record in the window, by outcome, ``running`` ones included.  ``skipped`` (lock
  held), ``refused`` (invalid input, approval missing) and ``awaiting_approval`` (an alert's run held
  for a human) runs ran nothing; they are counted and left out of everything below.
- ``ran``: runs that executed steps: succeeded, failed, rolled_back, rollback_failed, interrupted.
  The rates are each of these outcomes over ``ran``, so they add up to 1.
- durations: p50 and p95 of ``ended_at - started_at`` of the runs that ran, by the nearest-rank
  method (each percentile is one of the measured durations).  An interrupted run that ``reap_stale``
  finished is left out: its end is when a later command noticed the dead writer.
- recovery: for each streak of runs that ran and did not succeed, the time from the end of the
  first run of the streak to the end of the next succeeded run of the same runbook (in the same
  mode); its mean and ``n``.  A reaped interrupted run's failure counts from its start.  A streak
  with no success after it is not averaged in: ``unrecovered_since`` says since when it is open.

``--check`` runs are kept apart: each runbook has one set of figures for its real runs and, when
it has any, one for its dry runs.  Figures are computed from the store every time; nothing is
kept between invocations.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from technician_ops.errors import UsageError
from technician_ops.outcomes import Outcome

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from technician_ops.audit.store import RunRow

RAN = (Outcome.SUCCEEDED.value, Outcome.ROLLED_BACK.value, Outcome.FAILED.value, Outcome.ROLLBACK_FAILED.value,
       Outcome.INTERRUPTED.value)
NOT_RAN = (Outcome.SKIPPED.value, Outcome.REFUSED.value, Outcome.AWAITING_APPROVAL.value)
ALL = (*RAN, *NOT_RAN, Outcome.RUNNING.value)
PERCENTILES = (50, 95)


@dataclass
class Figures:
    """The figures of one runbook in one mode (real runs, or ``--check`` runs)."""

    runbook: str
    check: bool
    outcomes: dict[str, int] = field(default_factory=lambda: {o: 0 for o in ALL})
    durations: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    unrecovered_since: dt.datetime | None = None
    first_started: dt.datetime | None = None
    last_started: dt.datetime | None = None

    @property
    def runs(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ran(self) -> int:
        return sum(self.outcomes[o] for o in RAN)

    @property
    def rates(self) -> dict[str, float]:
        """Each outcome of the runs that ran, as a fraction of them; empty when none ran."""
        return {o: self.outcomes[o] / self.ran for o in RAN} if self.ran else {}

    def percentile(self, p: float) -> float | None:
        return percentile(self.durations, p)

    @property
    def recovery_mean(self) -> float | None:
        return sum(self.recoveries) / len(self.recoveries) if self.recoveries else None

    def to_json(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook, "check": self.check, "runs": self.runs, "ran": self.ran,
            "outcomes": dict(self.outcomes), "rates": {o: round(r, 6) for o, r in self.rates.items()},
            "duration_seconds": {"n": len(self.durations),
                                 **{f"p{p}": _round(self.percentile(p)) for p in PERCENTILES}},
            "recovery_seconds": {"n": len(self.recoveries), "mean": _round(self.recovery_mean),
                                 "unrecovered_since": _iso(self.unrecovered_since)},
            "first_started_at": _iso(self.first_started), "last_started_at": _iso(self.last_started),
        }


@dataclass
class StatsReport:
    figures: list[Figures]
    since: dt.datetime | None = None
    runbook: str | None = None
    metrics_file: Path | None = None  # where the gauges were written, if asked

    def to_json(self) -> dict[str, Any]:
        return {"runbook": self.runbook, "since": _iso(self.since), "runbooks": [f.to_json() for f in self.figures]}


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile: the smallest value with at least p% of ``values`` at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def compute(rows: Iterable[RunRow]) -> list[Figures]:
    """Figures per (runbook, mode) from ``run_rows``; any row order is fine."""
    groups: dict[tuple[str, bool], list[RunRow]] = {}
    for row in rows:
        groups.setdefault((row.runbook, bool(row.check)), []).append(row)
    out = []
    for (runbook, check), members in sorted(groups.items()):
        members.sort(key=lambda r: (r.started_at, r.run_id))
        out.append(_figures(runbook, check, members))
    return out


def _figures(runbook: str, check: bool, rows: list[RunRow]) -> Figures:
    fig = Figures(runbook, check)
    failing_since: dt.datetime | None = None  # end of the first run of the open non-success streak
    for row in rows:
        outcome = row.outcome if row.outcome in fig.outcomes else Outcome.RUNNING.value
        fig.outcomes[outcome] += 1
        started, ended = _parse(row.started_at), _parse(row.ended_at)
        if started is not None:
            fig.first_started = fig.first_started or started
            fig.last_started = started
        if outcome not in RAN:
            continue
        if started is not None and ended is not None and not row.reaped:
            fig.durations.append(max((ended - started).total_seconds(), 0.0))
        if outcome == Outcome.SUCCEEDED.value:
            if failing_since is not None and ended is not None:
                fig.recoveries.append(max((ended - failing_since).total_seconds(), 0.0))
            failing_since = None
        elif failing_since is None:
            failing_since = started if row.reaped or ended is None else ended
    fig.unrecovered_since = failing_since
    return fig


# -- text -------------------------------------------------------------------------------------


def text(report: StatsReport) -> str:
    if not report.figures:
        what = f"no runs of {report.runbook} recorded" if report.runbook else "no runs recorded"
        return what + (f" since {_iso(report.since)}" if report.since else "")
    lines: list[str] = []
    if report.since is not None:
        lines.append(f"runs started since {_iso(report.since)}")
    for fig in report.figures:
        lines.append(f"{fig.runbook}" + ("  (--check runs)" if fig.check else ""))
        ran = ", ".join(f"{o} {fig.outcomes[o]}" for o in RAN)
        others = ", ".join(f"{o} {fig.outcomes[o]}" for o in (*NOT_RAN, Outcome.RUNNING.value))
        lines.append(f"  runs {fig.runs}: ran {fig.ran} ({ran}); {others}")
        if fig.ran:
            lines.append("  of the runs that ran: " + ", ".join(f"{o} {r:.1%}" for o, r in fig.rates.items()))
        if fig.durations:
            lines.append(f"  duration: p50 {_seconds(fig.percentile(50))}, p95 {_seconds(fig.percentile(95))} "
                         f"(n={len(fig.durations)})")
        if fig.recoveries:
            lines.append(f"  recovery, failed run to next success: mean {_seconds(fig.recovery_mean)} "
                         f"(n={len(fig.recoveries)})")
        elif fig.ran:
            lines.append("  recovery, failed run to next success: n=0")
        if fig.unrecovered_since is not None:
            lines.append(f"  no success since the run that failed at {_iso(fig.unrecovered_since)}")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h {minutes} min"
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


# -- Prometheus -------------------------------------------------------------------------------

PREFIX = "technician_ops_stats_"
FAMILIES: dict[str, str] = {
    "technician_ops_stats_runs": "Runs recorded in the window, by outcome (running: not finished yet).",
    "technician_ops_stats_outcome_ratio": "Fraction of the runs that ran ending in each outcome.",
    "technician_ops_stats_duration_p50_seconds": "Median duration of the runs that ran (nearest rank).",
    "technician_ops_stats_duration_p95_seconds": "95th percentile duration of the runs that ran (nearest rank).",
    "technician_ops_stats_recoveries": "Failed streaks followed by a succeeded run: the n of the recovery mean.",
    "technician_ops_stats_recovery_mean_seconds": "Mean time from the end of a failed run to the end of the next "
                                                  "succeeded run.",
    "technician_ops_stats_unrecovered_since_timestamp_seconds": "Unix time at which the open streak of failed runs "
                                                                "began (no success since).",
    "technician_ops_stats_window_start_timestamp_seconds": "The --since of these figures, as Unix time.",
    "technician_ops_stats_generated_timestamp_seconds": "Unix time at which these figures were computed.",
}


class StatsMetricsError(UsageError):
    """The file named for the gauges is not one ``stats`` may replace."""


def metrics_text(report: StatsReport, now: float) -> bytes:
    """The gauges of ``report`` in the text exposition format, written by prometheus_client."""
    from prometheus_client.metrics_core import Metric

    from technician_ops.outputs.metrics import exposition

    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in FAMILIES}
    for fig in report.figures:
        labels = {"runbook": fig.runbook, "check": "true" if fig.check else "false"}
        for outcome, count in fig.outcomes.items():
            samples["technician_ops_stats_runs"].append(({**labels, "outcome": outcome}, float(count)))
        for outcome, rate in fig.rates.items():
            samples["technician_ops_stats_outcome_ratio"].append(({**labels, "outcome": outcome}, rate))
        for p in PERCENTILES:
            value = fig.percentile(p)
            if value is not None:
                samples[f"technician_ops_stats_duration_p{p}_seconds"].append((labels, value))
        samples["technician_ops_stats_recoveries"].append((labels, float(len(fig.recoveries))))
        if fig.recovery_mean is not None:
            samples["technician_ops_stats_recovery_mean_seconds"].append((labels, fig.recovery_mean))
        if fig.unrecovered_since is not None:
            samples["technician_ops_stats_unrecovered_since_timestamp_seconds"].append(
                (labels, fig.unrecovered_since.timestamp()))
    if report.since is not None:
        samples["technician_ops_stats_window_start_timestamp_seconds"].append(({}, report.since.timestamp()))
    samples["technician_ops_stats_generated_timestamp_seconds"].append(({}, float(now)))
    families: list[Metric] = []
    for name, help_text in FAMILIES.items():
        if not samples[name]:
            continue
        family = Metric(name, help_text, "gauge")
        for labels, value in samples[name]:
            family.add_sample(name, labels, value)
        families.append(family)
    return exposition(families)


def foreign_content(path: Path) -> str | None:
    """Why ``path`` must not be replaced by ``stats``' gauges, or None (absent, empty, or ours).

    The file is ``stats``' own and replaced whole.  Pointed by mistake at the file ``run
    --metrics-file`` keeps (or anything else), it would erase that: refuse instead.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if not data.strip():
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = data.decode("utf-8")
        names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    except (UnicodeDecodeError, ValueError):
        return f"{path} is not a Prometheus text file"
    others = sorted(n for n in names if n not in FAMILIES)
    if others:
        return f"{path} holds other metrics ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
    return None


def write_metrics_file(path: Path, report: StatsReport, now: float) -> Path:
    """Replace ``path`` atomically with the gauges of ``report`` (0644: the node exporter reads it)."""
    from technician_ops.fsutil import atomic_write, regular_file_or_absent

    problem = regular_file_or_absent(path) or foreign_content(path)
    if problem:
        raise StatsMetricsError(problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, metrics_text(report, now), mode=0o644)
    return path


# -- times ------------------------------------------------------------------------------------


def _parse(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
