"""Last-run metrics for the node exporter's textfile collector.

Scheduled runbooks fail silently unless something watches them; a ``.prom``
file that the node exporter already scrapes is the cheapest watcher: alert on
``time() - technician_ops_last_success_timestamp_seconds{check="false"} > X``
or on ``technician_ops_last_run_outcome{check="false",outcome!="succeeded"} == 1``.

Every series has a ``runbook`` label and a ``check`` label: ``"true"`` for a
``--check`` dry run, ``"false"`` for a real one.  Both are kept, so a dry run
in CI never overwrites the outcome of the last real run.  Several runbooks
share one file, so a write reads the file, replaces the series of this runbook
in this mode and keeps every other series.  The read-modify-write is
serialised with ``flock`` on a sibling ``.lock`` file (the collector only reads
``*.prom``), and the new file is renamed into place, so the collector never
scrapes half a file.  The file belongs to technician-ops: metric families
other than the ones below are not carried over.  prometheus_client both reads
the file and writes it (its parser, its ``generate_latest``): the exposition
format's escaping and number syntax are the library's, not ours.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from technician_ops.errors import ConfigError
from technician_ops.events import Outcome
from technician_ops.fsutil import atomic_write

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

PREFIX = "technician_ops_last_"
OUTCOMES = tuple(o.value for o in Outcome if o is not Outcome.RUNNING)
# name -> help text, in the order the file lists them
FAMILIES: dict[str, str] = {
    "technician_ops_last_run_outcome": "1 for the outcome of the runbook's last run, 0 for every other outcome.",
    "technician_ops_last_run_duration_seconds": "Duration of the runbook's last run.",
    "technician_ops_last_run_timestamp_seconds": "Unix time at which the runbook's last run ended.",
    "technician_ops_last_success_timestamp_seconds": "Unix time at which the runbook last succeeded.",
    "technician_ops_last_run_exit_code": "Exit code of the runbook's last run.",
}

SUCCESS = "technician_ops_last_success_timestamp_seconds"

Series = dict[str, dict[tuple[tuple[str, str], ...], float]]  # family -> label set -> value


class MetricsError(ConfigError):
    """The metrics file cannot be read or written."""


def write_metrics(path: str | os.PathLike[str], runbook: str, outcome: Outcome | str, duration: float,
                  ended_at_ts: float, exit_code: int, *, check: bool = False) -> Path:
    """Record the run of ``runbook`` in ``path``, keeping other runbooks' series and its other mode's.

    ``check``: the run was a ``--check`` dry run.  Its series carry
    ``check="true"`` and replace only the runbook's previous dry run, so a dry
    run never hides the last real outcome, nor a real run the last dry one.
    """
    target = Path(path)
    outcome_value = Outcome(outcome).value
    if outcome_value not in OUTCOMES:
        raise MetricsError(f"cannot record outcome {outcome_value!r}: the run has not ended")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(target.with_name(target.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MetricsError(f"cannot write metrics next to {target}: {exc.strerror}") from exc
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        series = _read(target)
        run = {"runbook": runbook, "check": "true" if check else "false"}
        _record(series, run, outcome_value, float(duration), float(ended_at_ts), exit_code)
        # the node exporter usually runs as another user: the file is world-readable
        atomic_write(target, render(series), mode=0o644)
    finally:
        os.close(lock_fd)  # releases the flock
    return target


def _record(series: Series, run: dict[str, str], outcome: str, duration: float, ended_at_ts: float,
            exit_code: int) -> None:
    """Replace the series of one runbook in one mode (``run``: its runbook and check labels)."""
    key = _key(**run)
    last_success = series[SUCCESS].get(key)
    for family in series.values():
        for labels in [k for k in family if all(dict(k).get(name) == value for name, value in run.items())]:
            del family[labels]
    for value in OUTCOMES:
        series["technician_ops_last_run_outcome"][_key(**run, outcome=value)] = 1.0 if value == outcome else 0.0
    series["technician_ops_last_run_duration_seconds"][key] = duration
    series["technician_ops_last_run_timestamp_seconds"][key] = ended_at_ts
    series["technician_ops_last_run_exit_code"][key] = float(exit_code)
    if outcome == Outcome.SUCCEEDED.value:
        last_success = ended_at_ts
    if last_success is not None:
        series[SUCCESS][key] = last_success


def _read(path: Path) -> Series:
    from prometheus_client.parser import text_string_to_metric_families

    series: Series = {name: {} for name in FAMILIES}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return series
    except OSError as exc:
        raise MetricsError(f"cannot read metrics file {path}: {exc.strerror}") from exc
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in series:
                    series[sample.name][_key(**_with_check(sample.labels))] = float(sample.value)
    except ValueError as exc:
        raise MetricsError(f"metrics file {path} is not in the Prometheus text format: {exc}",
                           hint="delete it; the next run of each runbook writes its series again") from exc
    return series


def render(series: Series) -> bytes:
    """The text exposition format, written by prometheus_client; families and series in a stable order."""
    from prometheus_client.metrics_core import Metric

    families: list[Metric] = []
    for name, help_text in FAMILIES.items():
        samples = series.get(name) or {}
        if not samples:
            continue
        family = Metric(name, help_text, "gauge")
        # runbook first: a person reading the file sees one runbook's series together
        for labels in sorted(samples, key=lambda k: (dict(k).get("runbook", ""), k)):
            family.add_sample(name, dict(labels), samples[labels])
        families.append(family)
    return exposition(families)


def exposition(families: list[Metric]) -> bytes:
    """``families`` in Prometheus' text format, written by prometheus_client's own ``generate_latest``."""
    from prometheus_client.exposition import generate_latest

    return generate_latest(_Families(families))


@dataclass(frozen=True)
class _Families:
    """All that ``generate_latest`` asks of a registry: the families to expose."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


def _with_check(labels: dict[str, str]) -> dict[str, str]:
    """A series written before the ``check`` label existed counts as a real run's.

    So the runbook's next real run replaces it instead of leaving a stale
    duplicate that an alert on ``check="false"`` would never see go away.
    """
    return {"check": "false", **labels} if "runbook" in labels else labels


def _key(**labels: str) -> tuple[tuple[str, str], ...]:
    """The one canonical form of a label set, so a series read back replaces the one written."""
    return tuple(sorted(labels.items()))


def runbooks_in(path: str | os.PathLike[str]) -> Iterable[str]:
    """The runbooks that have series in ``path`` (for tooling and tests)."""
    series = _read(Path(path))
    return sorted({dict(k)["runbook"] for family in series.values() for k in family if "runbook" in dict(k)})
