"""Runbooks with ``schedule:`` as crontab lines, an /etc/cron.d file or systemd timers.

technician-ops has no daemon: a schedule is exported once and installed with
the system's own scheduler, which already handles logging, missed runs and
restarts.  Each entry runs ``technician-ops run NAME --output json`` from the
project root with ``TECHNICIAN_OPS_ORIGIN=cron`` so the audit record says who
started it.  An exported line runs as printed: it makes its own log
directory, and every path in it is quoted for the shell (and ``%`` for cron).
A scheduled run has no terminal and nobody to pass ``-p``, so a runbook whose
parameters are required without a default cannot be scheduled: ``entries``
reports it and the exports refuse it (exit 65).

Cron syntax is the subset ``runbook.cron`` accepts: five numeric fields
(``*``, numbers, ``a-b`` ranges, ``/n`` steps, comma lists) or an @alias.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from technician_ops import steps
from technician_ops.errors import ScheduleError, UsageError
from technician_ops.runbook.cron import cron_problem, next_fire_times, on_calendar
from technician_ops.runbook.model import Runbook
from technician_ops.engine.origin import ORIGIN_ENV

UNIT_PREFIX = "technician-ops-"
SH = "/bin/sh"
# A cron.d file inherits nothing from /etc/crontab, and cron's own PATH is /usr/bin:/bin: give the sbin and
# local directories Debian's /etc/crontab has (root's runbooks call sbin tools).
CRON_D_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# POSIX portable user names (not starting with '-' or '.'), at most 32 characters, a Samba-style trailing '$'
# allowed: a field of a cron.d line, so no blanks and nothing a shell reads.  Use fullmatch ("$" lets "root\n" by).
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\$?")


@dataclass(frozen=True)
class ScheduleEntry:
    runbook: str
    path: Path
    schedule: str
    problem: str | None = None  # why it cannot run unattended; exports refuse such entries
    warnings: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        return f"{UNIT_PREFIX}{self.runbook}"


def entries(project_root: Path, runbooks: Iterable[Runbook]) -> list[ScheduleEntry]:
    """One entry per runbook with ``schedule:``, sorted by name; problems recorded, not raised."""
    out = []
    for rb in runbooks:
        if not rb.schedule:
            continue
        problem = None
        required = sorted(name for name, p in rb.params.items() if p.required and p.default is None)
        if required:
            problem = (f"parameter(s) {', '.join(required)} are required and have no default: "
                       "a scheduled run has nobody to pass them (give them a default in the front matter)")
        warnings = []
        approvals = [s.name for s in rb.steps if (kind := steps.get(s.kind)) is not None and kind.asks_operator]
        if approvals:
            warnings.append(f"approve step(s) {', '.join(approvals)}: unattended runs exit 5 (approval missing)")
        try:
            path = rb.path.resolve().relative_to(Path(project_root).resolve())
        except ValueError:
            path = rb.path
        out.append(ScheduleEntry(rb.name, path, rb.schedule.strip(), problem, tuple(warnings)))
    return sorted(out, key=lambda e: e.runbook)


def _check(entries_: Iterable[ScheduleEntry], *paths: str) -> list[ScheduleEntry]:
    items = list(entries_)
    bad = [f"{e.runbook}: {e.problem}" for e in items if e.problem]
    if bad:
        raise ScheduleError("cannot schedule:\n" + "\n".join(bad))
    for e in items:
        problem = cron_problem(e.schedule)
        if problem:
            raise ScheduleError(f"{e.runbook}: invalid schedule {e.schedule!r}: {problem}")
    for value in paths:
        if "\n" in value or "\r" in value or "\0" in value:
            raise ScheduleError(f"path {value!r} contains a line break: it cannot go into a scheduler file")
    return items


def _argv(entry: ScheduleEntry, technician_ops_bin: str) -> list[str]:
    return [technician_ops_bin, "run", entry.runbook, "--output", "json"]


def _absolute(what: str, value: Path | str) -> str:
    text = str(value)
    if not Path(text).is_absolute():
        raise ScheduleError(f"{what} {text!r} must be an absolute path: a scheduler starts jobs elsewhere")
    return text


def check_user(user: str) -> str:
    """``user`` if it is a safe user name that exists here; else a UsageError saying which."""
    if not USER_NAME.fullmatch(user):
        raise UsageError(f"user name {user!r} is not a valid user name (letters, digits, '.', '_', '-'; "
                         "not starting with '-' or '.'; at most 32 characters)")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"no user {user!r} on this machine: cron would skip every line that names it",
                         hint="create the user first, or pass --user with an existing one") from None
    return user


def current_user() -> str:
    """The effective user's name from the password database (not $USER, which a caller may have set)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise UsageError(f"uid {os.geteuid()} has no user name: cron.d lines need one",
                         hint="pass --user NAME") from None


def job_command(entry: ScheduleEntry, *, technician_ops_bin: str, project_root: str, log_dir: str) -> str:
    """The ``sh`` command a cron line runs: every value shell-quoted, the log directory made first."""
    return f"cd {shlex.quote(project_root)} && " + _logged(entry, technician_ops_bin, log_dir, f"{ORIGIN_ENV}=cron ")


def _logged(entry: ScheduleEntry, technician_ops_bin: str, log_dir: str, prefix: str) -> str:
    """``mkdir -p`` the log directory, then run with output appended to LOG_DIR/NAME.log.

    Nothing else creates the log directory before the shell opens the log for
    ``>>``: without the ``mkdir`` a fresh project's redirection fails and the
    runbook never starts.  The shell opens the log (not the tool), so even a
    tool that cannot start (a moved venv) leaves its error there.  ``-m 700``
    applies only when the last directory is created (an existing one keeps its
    mode); the tool makes its state directory 0700 itself.
    """
    log = str(Path(log_dir) / f"{entry.runbook}.log")
    return (f"mkdir -p -m 700 {shlex.quote(log_dir)} && "
            f"{prefix}{shlex.join(_argv(entry, technician_ops_bin))} >> {shlex.quote(log)} 2>&1")


def _cron_lines(entries_: Iterable[ScheduleEntry], technician_ops_bin: str, project_root: Path | str,
                log_dir: Path | str, user: str | None) -> list[str]:
    bin_ = _absolute("technician-ops binary", technician_ops_bin)
    root, logs = _absolute("project root", project_root), _absolute("log directory", log_dir)
    items = _check(entries_, bin_, root, logs)
    lines = []
    for e in items:
        command = job_command(e, technician_ops_bin=bin_, project_root=root, log_dir=logs)
        # In a cron command an unescaped % is a newline: escape it (cron removes the backslash).
        who = f" {user}" if user else ""
        lines.append(f"{e.schedule}{who} {command.replace('%', chr(92) + '%')}")
    return lines


def export_crontab(entries_: Iterable[ScheduleEntry], *, technician_ops_bin: str, project_root: Path | str,
                   log_dir: Path | str) -> str:
    """A user crontab fragment (``crontab -e``): one line per runbook, output appended to LOG_DIR/NAME.log."""
    lines = _cron_lines(entries_, technician_ops_bin, project_root, log_dir, None)
    return "\n".join([
        "# technician-ops schedule: generated by `technician-ops schedule export`; edit the runbooks, not this",
        "# Each run appends JSON events to its log; the audit store records the outcome.",
        *lines]) + "\n"


def export_cron_d(entries_: Iterable[ScheduleEntry], *, technician_ops_bin: str, project_root: Path | str,
                  log_dir: Path | str, user: str) -> str:
    """A file for ``/etc/cron.d``: lines with a user field, and the environment they need.

    Unlike a user crontab, a cron.d file is one file of its own, so its
    ``SHELL``/``PATH`` lines touch no other job.  cron reads only files whose
    names are letters, digits, ``_`` and ``-`` (run-parts rules: no dots), owned
    by root and not group- or other-writable: the header says so, since the
    export cannot see where its output is written.
    """
    lines = _cron_lines(entries_, technician_ops_bin, project_root, log_dir, check_user(user))
    return "\n".join([
        "# technician-ops schedule for /etc/cron.d: generated by `technician-ops schedule export --format cron.d`;",
        "# edit the runbooks, not this. Name the file with letters, digits, '_' and '-' only (no dots: cron",
        "# ignores such files), e.g. /etc/cron.d/technician-ops; it must be owned by root, mode 0644.",
        f"SHELL={SH}",
        f"PATH={CRON_D_PATH}",
        *lines]) + "\n"


def export_systemd(entries_: Iterable[ScheduleEntry], *, technician_ops_bin: str, project_root: Path | str,
                   log_dir: Path | str | None = None, user: str | None = None) -> dict[str, str]:
    """{unit file name: text}: a ``.service`` and a ``.timer`` per runbook.

    Output goes to the journal (``journalctl -u technician-ops-NAME``) unless
    ``log_dir`` is given.  Then the service runs the same ``sh`` command as the
    cron line, which makes the directory before it opens the log.
    ``StandardOutput=append:`` cannot: systemd opens that file for every command
    of the unit, an ``ExecStartPre=`` that would make its directory included,
    and never creates the directory itself (the unit fails with 209/STDOUT;
    systemd/systemd#27591).
    ``user`` sets ``User=`` (a system unit otherwise runs as root).
    """
    bin_ = _absolute("technician-ops binary", technician_ops_bin)
    root = _absolute("project root", project_root)
    logs = _absolute("log directory", log_dir) if log_dir is not None else None
    items = _check(entries_, bin_, root, logs or "")
    if user is not None:
        check_user(user)
    files: dict[str, str] = {}
    for e in items:
        calendars = on_calendar(e.schedule)
        if logs is None:
            argv = _argv(e, bin_)
        else:  # WorkingDirectory= and Environment= do what the cron line's `cd` and assignment do
            argv = [SH, "-c", _logged(e, bin_, logs, "exec ")]
        files[f"{e.unit}.service"] = (
            "# Generated by `technician-ops schedule export --format systemd`; edit the runbook, not this\n"
            "[Unit]\n"
            f"Description=technician-ops runbook {e.runbook}\n"
            "\n[Service]\n"
            "Type=oneshot\n"
            + (f"User={user}\n" if user else "")
            + f"WorkingDirectory={spec_escape(root)}\n"
            f"Environment={ORIGIN_ENV}=cron\n"
            f"ExecStart={' '.join(exec_quote(a) for a in argv)}\n"
            "SuccessExitStatus=75\n"  # lock held by the previous run: not a unit failure
        )
        files[f"{e.unit}.timer"] = (
            "# Generated by `technician-ops schedule export --format systemd`\n"
            "[Unit]\n"
            f"Description=Schedule of technician-ops runbook {e.runbook} ({e.schedule})\n"
            "\n[Timer]\n"
            + "".join(f"OnCalendar={c}\n" for c in calendars)
            + "AccuracySec=1s\n"
            "Persistent=false\n"  # like cron: a run missed while the machine was off is not made up
            "\n[Install]\n"
            "WantedBy=timers.target\n"
        )
    return files


def serve_unit(*, technician_ops_bin: str, project_root: Path | str, args: list[str], user: str | None = None,
               stop_timeout: float = 120) -> str:
    """A ``technician-ops-serve.service`` unit: ``technician-ops --project ROOT serve ARGS...``.

    ``KillMode=mixed``: on stop, SIGTERM goes to the server alone, which stops accepting and drains its
    runs (each in a process group of its own) by its deadline; whatever is left after ``TimeoutStopSec=``
    (``stop_timeout``: the drain deadline plus the runs' time to roll back) is killed.  The default,
    ``control-group``, would SIGTERM every run at once.  Credentials never go in the unit: the token as
    a file (``--token-file``), a webhook URL in an ``EnvironmentFile=``.
    """
    bin_ = _absolute("technician-ops binary", technician_ops_bin)
    root = _absolute("project root", project_root)
    _check([], bin_, root, *args)
    if user is not None:
        check_user(user)
    argv = [bin_, "--project", root, "serve", *args]
    return (
        "# Generated by `technician-ops serve --export systemd`; see docs/serve.md\n"
        "[Unit]\n"
        "Description=technician-ops serve: Alertmanager webhooks to runbooks\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n[Service]\n"
        "Type=simple\n"
        + (f"User={user}\n" if user else "")
        + f"WorkingDirectory={spec_escape(root)}\n"
        "# TECHNICIAN_OPS_NOTIFY_URL=... (a credential) in a file only its owner reads:\n"
        "# EnvironmentFile=/etc/technician-ops/serve.env\n"
        f"ExecStart={' '.join(exec_quote(a) for a in argv)}\n"
        "KillMode=mixed\n"
        f"TimeoutStopSec={max(1, int(stop_timeout))}s\n"
        "Restart=on-failure\n"
        "RestartSec=5s\n"
        "UMask=0077\n"
        "\n[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def exec_quote(arg: str) -> str:
    """Quote one ExecStart= argument (systemd.service(5) "Command lines")."""
    arg = spec_escape(arg).replace("$", "$$")  # ExecStart= expands $VARS too
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def spec_escape(value: str) -> str:
    """% starts a specifier in unit files: double it."""
    return value.replace("%", "%%")
