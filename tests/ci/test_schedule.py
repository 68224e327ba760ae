"""Schedule export, parsed back and run as printed: by /bin/sh with cron's environment, by the real cron
daemon from /etc/cron.d, and as systemd would run a service; OnCalendar cross-checked against
systemd-analyze and croniter; docs/ci.md's cron examples are the ones executed here."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

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


# -- the exported lines, run as printed --------------------------------------------------------
#
# A fresh project (no .technician-ops/) with one cheap scheduled runbook; the exported lines are run
# by /bin/sh with cron's environment, by the real cron daemon, and as systemd's ExecStart= would run.

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ci.md"
RUN_PARTS_NAME = re.compile(r"[A-Za-z0-9_-]+")  # the names cron reads in /etc/cron.d
TICK = """---
name: tick
summary: a cheap scheduled runbook
schedule: '* * * * *'
---

# Tick

```sh {name=hello kind=shell hosts=localhost}
echo "tick ran as $(id -un)"
```
"""


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A project never run: no .technician-ops/; a space and a % in its path (shell quoting, cron's \\%)."""
    root = tmp_path / "ops proj%1"
    runbook_dir, inventory_dir = root / "runbooks", root / "inventory"
    runbook_dir.mkdir(parents=True)
    inventory_dir.mkdir()
    (runbook_dir / "tick.md").write_text(TICK)
    (inventory_dir / "hosts.yml").write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    return root


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A `technician-ops` executable running this tree's code: a cron job gets no PYTHONPATH from the test."""
    path = tmp_path / "tool bin" / "technician-ops"
    path.parent.mkdir()
    path.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} "
                    f"exec {shlex.quote(sys.executable)} -m technician_ops.cli \"$@\"\n")
    path.chmod(0o755)
    return path


def cron_env() -> dict[str, str]:
    """What cron gives a job: HOME, LOGNAME, SHELL and a minimal PATH; nothing of the test's environment."""
    me = pwd.getpwuid(os.geteuid())
    return {"HOME": me.pw_dir, "LOGNAME": me.pw_name, "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}


def doc_commands(kind: str = "sh") -> list[str]:
    """The fenced ``kind`` commands of docs/ci.md's Cron section."""
    text = DOC.read_text()
    section = text[text.index("\n## Cron\n"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    return [line for block in re.findall(rf"^```{kind}\n(.*?)^```$", section, re.M | re.S) for line in block.splitlines()]


def cron_command(line: str, user_field: bool = False) -> str:
    """The command part of a crontab (or cron.d) line, as cron hands it to the shell."""
    command = line.split(None, 6 if user_field else 5)[-1]
    assert "%" not in command.replace("\\%", ""), "a bare % would end the command at a newline"
    return command.replace("\\%", "%")


def tick_runs(root: Path) -> list[dict[str, Any]]:
    from technician_ops.api import history
    from technician_ops.project import load_project

    if not (root / ".technician-ops" / "audit.db").exists():
        return []
    return history(load_project(root, environ={}), "tick")


def ran_from_cron(root: Path, log_dir: Path) -> None:
    """The tick runbook ran once, from cron, succeeded, and its JSON events are in its log."""
    runs = tick_runs(root)
    assert [(r["origin"], r["outcome"]) for r in runs] == [("cron", "succeeded")], runs
    events = [json.loads(line) for line in (log_dir / "tick.log").read_text().splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert events[-1]["outcome"] == "succeeded" and events[-1]["run_id"] == runs[0]["run_id"]
    assert (log_dir.stat().st_mode & 0o777) == 0o700


def test_docs_example_line_is_what_export_prints() -> None:
    bundled = load_runbook(REPO / "runbooks" / "disk-usage-check.md", REPO)
    text = export_crontab(entries(Path("/srv/ops"), [bundled]), technician_ops_bin="/srv/ops/.venv/bin/technician-ops",
                          project_root="/srv/ops", log_dir="/srv/ops/.technician-ops/logs")
    assert f"\n    {text.splitlines()[-1]}\n" in DOC.read_text()


@pytest.mark.integration
def test_docs_crontab_example_runs_a_fresh_project(fresh: Path, tool: Path, tmp_path: Path) -> None:
    """docs/ci.md's crontab pipeline (with a stand-in `crontab` that keeps the table in a file), then the
    installed line run by /bin/sh in cron's environment: the runbook runs, and its log is written."""
    table = tmp_path / "crontab"
    table.write_text("MAILTO=ops@example.org\n0 * * * * /usr/bin/true\n")  # what was there stays
    (tool.parent / "crontab").write_text('#!/bin/sh\ncase "$1" in\n  -l) cat "$TABLE" ;;\n'
                                         '  -) cat > "$TABLE.new" && mv "$TABLE.new" "$TABLE" ;;\n  *) exit 2 ;;\nesac\n')
    (tool.parent / "crontab").chmod(0o755)
    [pipeline] = [c for c in doc_commands() if "| crontab -" in c]
    subprocess.run(["/bin/sh", "-c", pipeline], cwd=fresh, check=True, timeout=60,
                   env={"PATH": f"{tool.parent}:/usr/bin:/bin", "TABLE": str(table)})
    installed = table.read_text()
    assert installed.startswith("MAILTO=ops@example.org\n0 * * * * /usr/bin/true\n# technician-ops schedule")
    [line] = [line for line in installed.splitlines() if " run tick " in line]
    assert line.startswith("* * * * * cd ")
    assert not (fresh / ".technician-ops").exists()
    done = subprocess.run(["/bin/sh", "-c", cron_command(line)], cwd=cron_env()["HOME"], env=cron_env(),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done
    ran_from_cron(fresh, fresh / ".technician-ops" / "logs")


def test_cli_cron_d_defaults_to_the_current_user_and_refuses_misuse(fresh: Path, tool: Path) -> None:
    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(tool), "--project", str(fresh), "schedule", "export", *args],
                              capture_output=True, text=True, timeout=60)

    out = export("--format", "cron.d", "--bin", str(tool))
    assert out.returncode == 0, out.stderr
    [line] = [line for line in out.stdout.splitlines() if " run tick " in line]
    assert line.split()[5] == pwd.getpwuid(os.geteuid()).pw_name
    assert f"{shlex.quote(str(tool))} run tick" in line
    for args, message in [(("--user", "root"), "a user crontab has no user field"),
                          (("--format", "cron.d", "--user", "r oot"), "not a valid user name"),
                          (("--format", "cron.d", "-o", "/tmp"), "-o/--output-dir writes systemd units")]:
        refused = export(*args)
        assert refused.returncode == 64 and message in refused.stderr, (args, refused.stderr)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="writes /etc/cron.d and starts the cron daemon: needs root")
def test_real_cron_runs_the_docs_cron_d_file(fresh: Path, tool: Path, tmp_path: Path) -> None:
    """docs/ci.md's /etc/cron.d command, under the real cron daemon (Debian's `cron`), every minute."""
    daemon_bin = shutil.which("cron") or shutil.which("cron", path="/usr/sbin:/sbin")
    assert daemon_bin, "the cron daemon is missing: scripts/setup installs Debian's cron package"
    [command] = [c for c in doc_commands() if "--format cron.d" in c]
    documented = "/etc/cron.d/technician-ops"
    assert command.endswith(f"> {documented}") and RUN_PARTS_NAME.fullmatch(Path(documented).name)
    target = Path("/etc/cron.d") / f"technician-ops-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # never a real one
    assert RUN_PARTS_NAME.fullmatch(target.name)
    logs = fresh / ".technician-ops" / "logs"
    daemon_log = tmp_path / "cron.stderr"
    daemon = None
    try:
        with daemon_log.open("w") as err:
            daemon = subprocess.Popen([daemon_bin, "-f", "-L", "15"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err)
        time.sleep(1)
        if daemon.poll() is not None:  # a cron already runs (it holds the pid file): it reads the new file too
            assert "lock" in daemon_log.read_text(), f"cron exited {daemon.returncode}: {daemon_log.read_text()}"
            daemon = None
        # Installed as the docs say, into a file of our own, with cron already running (no restart needed).
        subprocess.run(["/bin/sh", "-c", command.replace(documented, str(target))], cwd=fresh, check=True,
                       timeout=60, env={"PATH": f"{tool.parent}:/usr/bin:/bin"})
        installed = time.monotonic()
        mode = target.stat()
        assert mode.st_uid == 0 and not mode.st_mode & 0o022, oct(mode.st_mode)
        assert "\\%" in target.read_text()  # the project path's % went through cron's escaping
        while not (logs / "tick.log").exists():  # cron fires at the next minute boundary
            assert time.monotonic() - installed < 75, f"cron did not start the job in 75 s; cron: {daemon_log.read_text()}"
            time.sleep(0.5)
        started = time.monotonic() - installed
        while not any(r["outcome"] == "succeeded" for r in tick_runs(fresh)):
            assert time.monotonic() - installed < started + 60, f"the cron run did not finish: {(logs / 'tick.log').read_text()}"
            time.sleep(0.5)
        target.unlink()  # no second run while the first one's record is checked
        ran_from_cron(fresh, logs)
        print(f"cron started the run {started:.1f} s after the file was written; "
              f"it ended {time.monotonic() - installed:.1f} s after")
    finally:
        target.unlink(missing_ok=True)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=10)


def _specifiers(value: str) -> str:
    """%% is a %; any other %x is a specifier systemd would replace: here, a test failure."""
    def one(m: re.Match[str]) -> str:
        assert m[1] == "%", f"unescaped specifier %{m[1]} in {value!r}"
        return "%"
    return re.sub(r"%(.)", one, value)


def _variables(word: str, env: dict[str, str]) -> str:
    """$$ is a $; $NAME and ${NAME} are expanded (to "" when unset), as ExecStart= does at exec time."""
    return re.sub(r"\$(\$|\{(\w+)\}|(\w+))", lambda m: "$" if m[1] == "$" else env.get(m[2] or m[3], ""), word)


def exec_start_argv(service: str) -> tuple[list[str], str, dict[str, str]]:
    """ExecStart=, WorkingDirectory= and Environment= of a unit as systemd reads them (systemd.service(5)):
    specifiers first, then words (double quotes, C escapes \\\\ and \\"), then variables at exec time."""
    values = dict(re.findall(r"^(ExecStart|WorkingDirectory|Environment)=(.*)$", service, re.M))
    name, _, value = values["Environment"].partition("=")
    env = {name: value}
    argv = [_variables(word, env) for word in shlex.split(_specifiers(values["ExecStart"]))]
    return argv, _specifiers(values["WorkingDirectory"]), env


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed (apt-get install systemd)")
@pytest.mark.parametrize("log_dir", [None, "lo'g \"s\" %d $HOME \\x"])
def test_systemd_units_verify_clean(fresh: Path, tool: Path, tmp_path: Path, log_dir: str | None) -> None:
    """`systemd-analyze verify` finds nothing to say about the units: ExecStart= binaries exist, quoting and
    % specifiers parse (it reports unbalanced quotes, unknown escapes and bad specifiers)."""
    from technician_ops.api import schedule_export
    from technician_ops.project import load_project

    units = tmp_path / "units"
    units.mkdir()
    files = schedule_export(load_project(fresh, environ={}), "systemd", binary=str(tool),
                            log_dir=tmp_path / log_dir if log_dir else None)
    assert isinstance(files, dict) and sorted(files) == ["technician-ops-tick.service", "technician-ops-tick.timer"]
    for name, text in files.items():
        (units / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units.iterdir())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done
    argv, _, _ = exec_start_argv(files["technician-ops-tick.service"])
    assert argv[0] == (str(tool) if log_dir is None else "/bin/sh")


@pytest.mark.integration
def test_systemd_service_with_a_log_dir_runs_a_fresh_project(fresh: Path, tool: Path, tmp_path: Path) -> None:
    """The service's ExecStart=, read as systemd reads it, run in its WorkingDirectory= and Environment=:
    the log directory (quotes, %, $ and a backslash in its path) is made, the runbook runs, the log is written."""
    from technician_ops.api import schedule_export
    from technician_ops.project import load_project

    logs = tmp_path / "var" / "lo'g \"s\" %d $HOME \\x"
    files = schedule_export(load_project(fresh, environ={}), "systemd", binary=str(tool), log_dir=logs)
    assert isinstance(files, dict)
    argv, cwd, env = exec_start_argv(files["technician-ops-tick.service"])
    assert cwd == str(fresh) and env == {"TECHNICIAN_OPS_ORIGIN": "cron"}
    done = subprocess.run(argv, cwd=cwd, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done
    ran_from_cron(fresh, logs)
