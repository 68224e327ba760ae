"""Schedule export, parsed back; OnCalendar cross-checked against systemd-analyze and croniter."""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from technician_ops.plan.loader import load_runbook
from technician_ops.errors import UsageError
from technician_ops.outputs.schedule import (ScheduleError, entries, export_cron_d, export_crontab, export_systemd,
                                             next_fire_times, on_calendar)

BIN = "/opt/technician ops/bin/technician-ops"  # a space: quoting must hold
UTC = dt.timezone.utc


def runbook(root: Path, name: str, front: str, steps: str = "") -> Path:
    path = root / "runbooks" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = steps or "```sh {name=hello kind=shell hosts=localhost}\necho hi\n```\n"
    path.write_text(f"---\nname: {name}\nsummary: test\n{front}---\n\n# {name}\n\n{body}")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "my proj%dir"
    runbook(root, "nightly-backup", "schedule: '30 2 * * *'\nparams:\n  keep: {type: int, default: 7}\n")
    runbook(root, "quarter-hour", "schedule: '*/15 * * * *'\n")
    runbook(root, "unscheduled", "")
    runbook(root, "needs-param", "schedule: '@daily'\nparams:\n  target: {type: string, required: true}\n")
    runbook(root, "asks", "schedule: '0 9 * * 1-5'\n",
            "```text {name=confirm kind=approve}\nGo?\n```\n\n```sh {name=hello kind=shell hosts=localhost}\necho hi\n```\n")
    return root


def load_all(root: Path) -> list:
    return [load_runbook(p, root) for p in sorted((root / "runbooks").glob("*.md"))]


def test_entries_only_scheduled_and_problems_recorded(project: Path) -> None:
    es = {e.runbook: e for e in entries(project, load_all(project))}
    assert sorted(es) == ["asks", "needs-param", "nightly-backup", "quarter-hour"]
    assert es["nightly-backup"].problem is None and es["nightly-backup"].schedule == "30 2 * * *"
    assert es["nightly-backup"].path == Path("runbooks/nightly-backup.md")
    assert "target" in (es["needs-param"].problem or "") and "no default" in (es["needs-param"].problem or "")
    assert es["asks"].problem is None and "confirm" in es["asks"].warnings[0]


def test_export_refuses_required_params_without_default(project: Path) -> None:
    with pytest.raises(ScheduleError, match="needs-param: parameter\\(s\\) target are required") as err:
        export_crontab(entries(project, load_all(project)), technician_ops_bin=BIN, project_root=project,
                       log_dir="/var/log/to")
    assert err.value.exit_code == 65
    with pytest.raises(ScheduleError):
        export_systemd(entries(project, load_all(project)), technician_ops_bin=BIN, project_root=project)


def test_crontab_lines_parse_back_to_the_expected_argv(project: Path) -> None:
    es = [e for e in entries(project, load_all(project)) if e.problem is None]
    text = export_crontab(es, technician_ops_bin=BIN, project_root=project, log_dir="/var/log/tech ops")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 3
    by_name = {}
    for line in lines:
        fields = line.split(None, 5)
        schedule, command = " ".join(fields[:5]), fields[5]
        assert "%" not in command.replace("\\%", "")  # cron would turn a bare % into a newline
        argv = shlex.split(command.replace("\\%", "%"))  # what cron hands to /bin/sh, as words
        by_name[argv[12]] = (schedule, argv)
    schedule, argv = by_name["nightly-backup"]
    assert schedule == "30 2 * * *"
    assert argv == ["cd", str(project), "&&", "mkdir", "-p", "-m", "700", "/var/log/tech ops", "&&",
                    "TECHNICIAN_OPS_ORIGIN=cron", BIN, "run", "nightly-backup", "--output", "json",
                    ">>", "/var/log/tech ops/nightly-backup.log", "2>&1"]
    assert by_name["quarter-hour"][0] == "*/15 * * * *"
    assert by_name["asks"][0] == "0 9 * * 1-5"


def test_cron_d_lines_have_a_user_field_and_a_header(project: Path) -> None:
    es = [e for e in entries(project, load_all(project)) if e.runbook == "nightly-backup"]
    text = export_cron_d(es, technician_ops_bin=BIN, project_root=project, log_dir="/var/log/to", user="root")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[:2] == ["SHELL=/bin/sh", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    fields = lines[2].split(None, 6)
    assert fields[:6] == ["30", "2", "*", "*", "*", "root"]
    crontab = export_crontab(es, technician_ops_bin=BIN, project_root=project, log_dir="/var/log/to").splitlines()[-1]
    assert fields[6] == crontab.split(None, 5)[5]  # the same command as the crontab line
    assert "no dots" in text  # the run-parts file-name rule, where the operator sees it


@pytest.mark.parametrize("user", ["a b", "-root", "root\n", "x\n* * * * * root id", "ro:ot", "a;b", "", "u" * 40])
def test_cron_d_refuses_a_bad_user_name(project: Path, user: str) -> None:
    es = [e for e in entries(project, load_all(project)) if e.runbook == "nightly-backup"]
    with pytest.raises(UsageError, match="not a valid user name") as err:
        export_cron_d(es, technician_ops_bin=BIN, project_root=project, log_dir="/var/log/to", user=user)
    assert err.value.exit_code == 64


def test_cron_d_refuses_an_unknown_user(project: Path) -> None:
    with pytest.raises(UsageError, match="no user 'no-such-user-here'"):
        export_cron_d([], technician_ops_bin=BIN, project_root=project, log_dir="/var/log/to", user="no-such-user-here")


def test_crontab_command_really_runs_under_sh(project: Path, tmp_path: Path) -> None:
    """Run the exported command with /bin/sh (as cron does) against a stand-in binary that records its argv.

    The log directory does not exist yet, and its path has a space, a % and a quote: the line makes it.
    """
    fake = tmp_path / "bin dir" / "technician-ops"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s|" "$PWD" "$TECHNICIAN_OPS_ORIGIN" "$@"\n')
    fake.chmod(0o755)
    logs = tmp_path / "var" / "lo'g s%d"
    es = [e for e in entries(project, load_all(project)) if e.runbook == "nightly-backup"]
    line = export_crontab(es, technician_ops_bin=str(fake), project_root=project, log_dir=logs).splitlines()[-1]
    command = line.split(None, 5)[5].replace("\\%", "%")
    subprocess.run(["/bin/sh", "-c", command], check=True, env={"PATH": "/usr/bin:/bin"})
    assert (logs / "nightly-backup.log").read_text() == f"{project}|cron|run|nightly-backup|--output|json|"
    assert logs.stat().st_mode & 0o777 == 0o700


def test_crontab_needs_absolute_paths(project: Path) -> None:
    with pytest.raises(ScheduleError, match="absolute"):
        export_crontab([], technician_ops_bin="technician-ops", project_root=project, log_dir="/tmp")
    with pytest.raises(ScheduleError, match="log directory 'logs' must be an absolute path"):
        export_crontab([], technician_ops_bin=BIN, project_root=project, log_dir="logs")


def test_systemd_units(project: Path) -> None:
    es = [e for e in entries(project, load_all(project)) if e.problem is None]
    files = export_systemd(es, technician_ops_bin=BIN, project_root=project)
    assert sorted(files) == [f"technician-ops-{n}.{x}" for n in ("asks", "nightly-backup", "quarter-hour")
                             for x in ("service", "timer")]
    service = files["technician-ops-nightly-backup.service"]
    assert f'ExecStart="{BIN}" run nightly-backup --output json\n' in service
    assert f"WorkingDirectory={str(project).replace('%', '%%')}\n" in service
    assert "Environment=TECHNICIAN_OPS_ORIGIN=cron\n" in service
    assert "StandardOutput" not in service and "User=" not in service  # the journal; root for a system unit
    timer = files["technician-ops-asks.timer"]
    assert re.findall(r"^OnCalendar=(.*)$", timer, re.M) == ["Mon,Tue,Wed,Thu,Fri *-*-* 09:00:00"]
    with_user = export_systemd(es, technician_ops_bin=BIN, project_root=project, user="root")
    assert "\nUser=root\n" in with_user["technician-ops-asks.service"]


@pytest.mark.parametrize(("expr", "expected"), [
    ("*/15 * * * *", ["*-*-* *:00/15:00"]),
    ("30 2 * * *", ["*-*-* 02:30:00"]),
    ("0 9 * * 1-5", ["Mon,Tue,Wed,Thu,Fri *-*-* 09:00:00"]),
    ("0 0 * * 0,7", ["Sun *-*-* 00:00:00"]),
    ("5,35 8-17/2 1,15 * *", ["*-*-01,15 08..17/2:05,35:00"]),
    ("0 12 13 * 5", ["Fri *-*-* 12:00:00", "*-*-13 12:00:00"]),  # cron ORs day-of-month and day-of-week
    ("0 0 */2 * 1", ["Mon *-*-01/2 00:00:00"]),  # ...but not when one starts with *
    ("0 0 1 */3 *", ["*-01/3-01 00:00:00"]),
    ("@weekly", ["Sun *-*-* 00:00:00"]),
    ("@monthly", ["*-*-01 00:00:00"]),
])
def test_on_calendar(expr: str, expected: list[str]) -> None:
    assert on_calendar(expr) == expected


def test_on_calendar_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ScheduleError, match="no systemd timer equivalent"):
        on_calendar("@reboot")
    with pytest.raises(ScheduleError, match="runs backwards"):
        on_calendar("0 22-2 * * *")
    with pytest.raises(ScheduleError, match="invalid schedule"):
        on_calendar("61 * * * *")


def _systemd_times(calendars: list[str], base: dt.datetime, n: int) -> list[dt.datetime]:
    times: set[dt.datetime] = set()
    for cal in calendars:
        out = subprocess.run(["systemd-analyze", "calendar", f"--iterations={n}",
                              f"--base-time={base.strftime('%Y-%m-%d %H:%M:%S')} UTC", cal],
                             capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
        for stamp in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", out):
            times.add(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC))
    return sorted(times)[:n]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed (apt-get install systemd)")
@pytest.mark.parametrize("expr", ["*/15 * * * *", "30 2 * * *", "0 9 * * 1-5", "5,35 8-17/2 1,15 * *",
                                  "0 12 13 * 5", "0 0 1 */3 *", "10-20/5 */6 * 3-5 0", "@weekly", "@monthly"])
def test_systemd_agrees_with_croniter(expr: str) -> None:
    """The converted timer fires exactly when cron would, per systemd's own calendar parser."""
    base = dt.datetime(2024, 1, 1, 0, 7, tzinfo=UTC)
    assert _systemd_times(on_calendar(expr), base, 8) == next_fire_times(expr, 8, base)


def test_next_fire_times_quarter_hour() -> None:
    base = dt.datetime(2024, 3, 10, 13, 52, 30, tzinfo=UTC)
    assert next_fire_times("*/15 * * * *", now=base) == [
        dt.datetime(2024, 3, 10, 14, 0, tzinfo=UTC),
        dt.datetime(2024, 3, 10, 14, 15, tzinfo=UTC),
        dt.datetime(2024, 3, 10, 14, 30, tzinfo=UTC),
    ]


def test_next_fire_times_rejects_reboot_and_garbage() -> None:
    with pytest.raises(ScheduleError):
        next_fire_times("@reboot")
    with pytest.raises(ScheduleError):
        next_fire_times("every day")
