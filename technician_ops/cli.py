"""The command line: a thin click layer over ``technician_ops.api``.

Each command parses, calls the API, and prints.  Expected errors
(``TechnicianOpsError``) are rendered once, here, in one line plus a hint;
anything else is a bug: its traceback goes to a debug log, not the screen.
Heavy modules (ansible, ansible_runner, hvac, rich) are imported inside
commands so ``--help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from technician_ops.errors import ExitCode, TechnicianOpsError
from technician_ops.outcomes import Outcome

if TYPE_CHECKING:
    from pathlib import Path

OUTCOMES = [o.value for o in Outcome]
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _project(ctx: click.Context, **overrides: Any) -> Any:
    from technician_ops.api import open_project

    root = (ctx.find_root().obj or {}).get("project")
    return open_project(root, **overrides)


@click.group(context_settings=CONTEXT)
@click.option("--project", "project", type=click.Path(file_okay=False), envvar="TECHNICIAN_OPS_PROJECT",
              help="Project root (holds runbooks/). Default: nearest parent with runbooks/.")
@click.version_option(package_name="technician-ops")
@click.pass_context
def cli(ctx: click.Context, project: str | None) -> None:
    """Executable Markdown runbooks: steps run through Ansible, undo on failure, every run audited."""
    ctx.ensure_object(dict)
    ctx.obj["project"] = project


@cli.command("list")
@click.pass_context
def list_cmd(ctx: click.Context) -> None:
    """The runbooks under runbooks/ with their summaries."""
    from technician_ops.api import list_runbooks

    project = _project(ctx)
    rows = list_runbooks(project)
    if not rows:
        click.echo(f"no runbooks in {project.runbooks_dir}")
        return
    width = max(len(name) for _, name, _ in rows)
    for _path, name, summary in rows:
        click.echo(f"{name.ljust(width)}  {summary}")


@cli.command("show")
@click.argument("name")
@click.option("--step", help="With RUN_ID and --host: that step's whole output on that host.")
@click.option("--host", help="With RUN_ID and --step.")
@click.pass_context
def show_cmd(ctx: click.Context, name: str, step: str | None, host: str | None) -> None:
    """A runbook's parameters and steps, or a run's audit record (by RUN_ID)."""
    from technician_ops.api import show
    from technician_ops.outputs.render import output_text, printable, record_text, runbook_text

    if (step is None) != (host is None):
        raise click.UsageError("--step and --host go together")
    shown = show(name, _project(ctx))
    if shown.runbook is not None:
        if step is not None:
            raise click.UsageError("--step/--host show a run's output: give a RUN_ID")
        click.echo(runbook_text(shown.runbook, shown.hosts))
    elif step is not None and host is not None:
        click.echo(printable(output_text(shown.record or {}, step, host)))
    else:
        click.echo(printable(record_text(shown.record or {})))


@cli.command("lint")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--strict", is_flag=True, help="Warnings (e.g. a mutating step without undo) are errors.")
@click.option("--hosts", metavar="PATTERN", help="Hosts of a Markdown file that names none (a Runme README).")
@click.pass_context
def lint_cmd(ctx: click.Context, paths: tuple[str, ...], strict: bool, hosts: str | None) -> None:
    """Validate runbooks; print each problem as path:line: message."""
    from technician_ops.api import lint

    report = lint(list(paths), _project(ctx), strict=strict, hosts=hosts)
    for path in report.skipped:
        click.echo(f"{path}: skipped: no technician-ops front matter (not a runbook)", err=True)
    for diag in report.diagnostics:
        click.echo(str(diag))
    click.echo(f"{len(report.files)} runbook(s): {report.errors} error(s), {report.warnings} warning(s)", err=True)
    if report.errors:
        raise SystemExit(int(ExitCode.DATAERR))


def _param_options(func: Any) -> Any:
    func = click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
                        help="A runbook parameter (repeatable). Also TECHNICIAN_OPS_PARAM_<KEY>.")(func)
    func = click.option("-i", "--inventory", "inventory", multiple=True, type=click.Path(),
                        help="Ansible inventory (repeatable). Default: inventory/ of the project.")(func)
    return func


@cli.command("compile")
@click.argument("name")
@click.option("-o", "--output-dir", "out", required=True, type=click.Path(file_okay=False), help="Where to write.")
@click.option("--check", is_flag=True, help="Compile for check mode.")
@_param_options
@click.pass_context
def compile_cmd(ctx: click.Context, name: str, out: str, check: bool, params: tuple[str, ...], inventory: tuple[str, ...]) -> None:
    """Write the playbook, inventory and ansible.cfg a run would use."""
    from pathlib import Path

    from technician_ops.api import compile_runbook
    from technician_ops.runbook.params import parse_assignments

    files = compile_runbook(name, _project(ctx, inventory=inventory), Path(out), parse_assignments(params), check=check)
    for label, path in files.items():
        click.echo(f"{label:10} {path}")


@cli.command("run")
@click.argument("name")
@_param_options
@click.option("--check", is_flag=True, help="Dry run: Ansible check mode; nothing changes.")
@click.option("-y", "--yes", is_flag=True, help="Approve every approve step (non-interactive).")
@click.option("--approve", "approve", multiple=True, metavar="STEP", help="Approve one approve step (repeatable).")
@click.option("--output", "output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON event per line on stdout, for CI.")
@click.option("--strict", is_flag=True, help="Refuse a runbook with warnings.")
@click.option("--wait-lock", type=float, default=0.0, metavar="SECONDS", help="Wait for the runbook's lock instead of exiting 75.")
@click.option("--skip-preflight", is_flag=True, help="Do not check SSH reachability of the targets first.")
@click.option("--accelerate/--no-accelerate", default=None, envvar="TECHNICIAN_OPS_ACCELERATE",
              help="Run under mitogen's strategy (opt-in; falls back to linear with a notice if unsupported).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL", help="Audit store (postgresql://...). Default: SQLite in .technician-ops/.")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), help="Write a JUnit XML report (one testcase per step).")
@click.option("--metrics-file", envvar="TECHNICIAN_OPS_METRICS_FILE", type=click.Path(dir_okay=False),
              help="Prometheus textfile-collector metrics to update after the run.")
@click.option("--notify", "notify_url", envvar="TECHNICIAN_OPS_NOTIFY_URL", metavar="URL",
              help="Slack-compatible webhook POSTed on failure/rollback (prefer the env var: it is a credential).")
@click.option("-l", "--limit", metavar="PATTERN", help="As ansible-playbook: only these hosts (a pattern or @FILE).")
@click.option("-t", "--tags", multiple=True, metavar="TAGS", help="As ansible-playbook: only tasks with these tags; "
              "each step's tasks are tagged with its name (approve/check steps always run).")
@click.option("--skip-tags", multiple=True, metavar="TAGS", help="As ansible-playbook: skip tasks with these tags.")
@click.option("-D", "--diff", is_flag=True, help="As ansible-playbook: report what files and templates change.")
@click.option("--hosts", metavar="PATTERN", help="Hosts of a Markdown file that names none (a Runme README): "
              "its steps run there.")
@click.option("-v", "--verbose", is_flag=True, help="Show every kept line of each step's output (default: the last 10).")
@click.option("-e", "--extra-vars", "extra_vars", multiple=True, metavar="VARS",
              help="As ansible-playbook: KEY=VALUE, YAML/JSON, or @FILE (a runbook parameter is bound as with -p).")
@click.option("--run-id", hidden=True, callback=lambda ctx, param, value: _run_id(value),
              help="The run's id, chosen by the caller ('serve': to find its record after a restart); a lowercase "
                   "UUID not used before.")
@click.pass_context
def run_cmd(ctx: click.Context, name: str, params: tuple[str, ...], inventory: tuple[str, ...], check: bool, yes: bool,
            approve: tuple[str, ...], output: str, strict: bool, wait_lock: float, skip_preflight: bool,
            accelerate: bool | None, audit_url: str | None, junit: str | None, metrics_file: str | None, notify_url: str | None,
            limit: str | None, tags: tuple[str, ...], skip_tags: tuple[str, ...], diff: bool, hosts: str | None,
            verbose: bool, extra_vars: tuple[str, ...], run_id: str | None) -> None:
    """Run a runbook: steps in order, undo on failure, one audit record."""
    from technician_ops.api import RunRequest, run_command
    from technician_ops.outputs.console import JsonView, TextView
    from technician_ops.runbook.params import parse_assignments

    project = _project(ctx, inventory=inventory, audit_url=audit_url)
    view = TextView(verbose=verbose) if output == "text" else None
    interactive = sys.stdin.isatty() and output == "text"

    def prompt(step: str, text: str) -> bool:
        assert view is not None
        with view.lock:
            view.console.print(f"[bold yellow]approval needed[/] for step [bold]{step}[/]:\n{text}")
            return click.confirm("Approve?", default=False)

    request = RunRequest(name, parse_assignments(params), check=check, yes=yes, approve=approve, strict=strict,
                         prompt=prompt if interactive else None, wait_lock=wait_lock, skip_preflight=skip_preflight,
                         accelerate=accelerate, extra_vars=extra_vars, limit=limit, tags=tags, skip_tags=skip_tags,
                         diff=diff, hosts=hosts, run_id=run_id)
    with _Cancel() as stop:
        result = run_command(request, project, [view if view is not None else JsonView()], cancelled=stop,
                             junit=junit, metrics_file=metrics_file, notify_url=notify_url, warn=_warn)
    raise SystemExit(int(result.exit_code))


def _run_id(value: str | None) -> str | None:
    import re

    if value is not None and not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
        raise click.BadParameter(f"{value[:60]!r} is not a run id (a lowercase UUID)")
    return value


def _warn(text: str) -> None:
    click.echo(f"warning: {text}", err=True)


class _Cancel:
    """SIGTERM/SIGINT ask ansible-runner to stop; the record then says interrupted."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.flag

    def _handler(self, signum: int, frame: Any) -> None:
        import signal

        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self) -> "_Cancel":
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


@cli.command("approve")
@click.argument("run_id")
@click.option("--output", "output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def approve_cmd(ctx: click.Context, run_id: str, output: str, audit_url: str | None) -> None:
    """Release a run an alert started that waits for approval (awaiting_approval): it runs now, as a new
    run, its approve steps approved by you."""
    from technician_ops.api import approve_run, show
    from technician_ops.outputs.console import JsonView, TextView

    project = _project(ctx, audit_url=audit_url)
    record = show(run_id, project).record or {}
    saved = record.get("request") if isinstance(record.get("request"), dict) else {}
    if output == "text" and saved:
        from technician_ops.outputs.render import printable

        args = " ".join(f"-p {k}={v}" for k, v in sorted((saved.get("params") or {}).items()))
        limit = f" --limit {saved['limit']}" if saved.get("limit") else ""
        click.echo(printable(f"releasing run {record.get('run_id')}: {saved.get('runbook')} {args}{limit}".rstrip()),
                   err=True)
    with _Cancel() as stop:
        via = os.environ.get("TECHNICIAN_OPS_APPROVED_VIA", "")[:80]  # set by serve's web view: who signed in there
        user = _user() + (f" (via {via})" if via else "")
        result = approve_run(project, run_id, user=user, sinks=[TextView() if output == "text" else JsonView()],
                             cancelled=stop)
    raise SystemExit(int(result.exit_code))


def _user() -> str:
    """Who is approving: the login this process runs as (from the password database, not $USER)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


@cli.command("serve")
@click.option("--bind", default="127.0.0.1:9095", show_default=True, metavar="HOST:PORT",
              help="Where to listen. Anything but loopback needs --token-file or --hmac-secret-file.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Runs at once.")
@click.option("--queue-size", type=click.IntRange(1, 100000), default=64, show_default=True,
              help="Accepted runs waiting for a worker; beyond it a notification is answered 429.")
@click.option("--rate", default="1/5m", show_default=True, metavar="N/PERIOD",
              help="At most N starts of one runbook per PERIOD; an alert beyond it is refused (recorded).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Bearer token Alertmanager sends (http_config.authorization.credentials_file). "
                   "Or TECHNICIAN_OPS_SERVE_TOKEN. Never on the command line.")
@click.option("--hmac-secret-file", type=click.Path(dir_okay=False),
              help="Require X-Technician-Ops-Signature: sha256=HMAC-SHA256(body). Or TECHNICIAN_OPS_SERVE_HMAC_SECRET.")
@click.option("--notify", "notify_url", envvar="TECHNICIAN_OPS_NOTIFY_URL", metavar="URL",
              help="Slack-compatible webhook each run POSTs on failure/rollback (prefer the env var).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.option("--drain-timeout", type=click.FloatRange(0, 86400), default=60.0, show_default=True, metavar="SECONDS",
              help="On SIGTERM, how long running runs may finish before they are stopped (and roll back).")
@click.option("--max-body", type=click.IntRange(1024, 64 * 1024 * 1024), default=1024 * 1024, show_default=True,
              metavar="BYTES", help="Largest webhook body; a larger one is answered 413.")
@click.option("--export", "export", type=click.Choice(["systemd"]),
              help="Print a systemd service unit that runs this server with these options, and exit.")
@click.option("--user", help="--export systemd: User= of the unit.")
@click.option("--bin", "binary", type=click.Path(), help="--export: technician-ops executable (default: the one on PATH).")
@click.option("-o", "--output-dir", "out", type=click.Path(file_okay=False), help="--export: write the unit here.")
@click.option("--web-users-file", type=click.Path(dir_okay=False), envvar="TECHNICIAN_OPS_SERVE_WEB_USERS",
              help="People who may sign in to the web view (/ui/) and approve: NAME:HASH lines (--hash-password).")
@click.option("--hash-password", is_flag=True, help="Read a password (twice, at a terminal) and print its "
              "--web-users-file hash, then exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision, repeated notifications too.")
@click.pass_context
def serve_cmd(ctx: click.Context, bind: str, workers: int, queue_size: int, rate: str, token_file: str | None,
              hmac_secret_file: str | None, notify_url: str | None, audit_url: str | None, drain_timeout: float,
              max_body: int, export: str | None, user: str | None, binary: str | None, out: str | None,
              web_users_file: str | None, hash_password: bool, verbose: bool) -> None:
    """Take Alertmanager webhooks (POST /hooks/alertmanager) and run the runbook whose triggers match
    each firing alert (docs/serve.md)."""
    import logging

    from technician_ops.serve.config import ServeConfig, parse_bind, parse_rate, read_secret
    from technician_ops.serve.server import run_server

    if hash_password:
        from technician_ops.serve.ui import hash_password as make_hash

        password = click.prompt("password", hide_input=True, confirmation_prompt=sys.stdin.isatty(), err=True)
        click.echo(make_hash(password))
        return
    host, port = parse_bind(bind)
    count, period = parse_rate(rate)
    if export:
        _export_serve_unit(ctx, bind=bind, workers=workers, queue_size=queue_size, rate=rate, token_file=token_file,
                           hmac_secret_file=hmac_secret_file, drain_timeout=drain_timeout, max_body=max_body,
                           user=user, binary=binary, out=out)
        return
    if user or binary or out:
        raise click.UsageError("--user, --bin and -o go with --export systemd")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    project = _project(ctx, audit_url=audit_url)
    config = ServeConfig(project, host, port, workers=workers, queue_size=queue_size, rate=(count, period),
                         token=read_secret(token_file, "TECHNICIAN_OPS_SERVE_TOKEN", "token"),
                         hmac_secret=read_secret(hmac_secret_file, "TECHNICIAN_OPS_SERVE_HMAC_SECRET", "HMAC secret"),
                         notify_url=notify_url, audit_url=audit_url, drain_timeout=drain_timeout, max_body=max_body)
    from pathlib import Path

    from technician_ops.serve.config import is_loopback
    from technician_ops.serve.ui import installer, read_users

    users = read_users(Path(web_users_file)) if web_users_file else None
    run_server(config, extra=[installer(project, users, is_loopback(host))])


def _export_serve_unit(ctx: click.Context, *, bind: str, workers: int, queue_size: int, rate: str,
                       token_file: str | None, hmac_secret_file: str | None, drain_timeout: float, max_body: int,
                       user: str | None, binary: str | None, out: str | None) -> None:
    import shutil
    from pathlib import Path

    from technician_ops.outputs.schedule import serve_unit

    args = ["--bind", bind, "--workers", str(workers), "--queue-size", str(queue_size), "--rate", rate,
            "--drain-timeout", f"{drain_timeout:g}", "--max-body", str(max_body)]
    for flag, path in (("--token-file", token_file), ("--hmac-secret-file", hmac_secret_file)):
        if path:
            args += [flag, str(Path(path).absolute())]
    exe = binary or shutil.which("technician-ops") or str(Path(sys.executable).parent / "technician-ops")
    text = serve_unit(technician_ops_bin=str(Path(exe).resolve()), project_root=_project(ctx).root, args=args,
                      user=user, stop_timeout=drain_timeout + 60)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "technician-ops-serve.service").write_text(text)
        click.echo(f"wrote {Path(out) / 'technician-ops-serve.service'}")
    else:
        click.echo(text, nl=False)


@cli.command("history")
@click.argument("runbook", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--outcome", type=click.Choice(OUTCOMES))
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), help="Runs started at or after (UTC).")
@click.option("--controller", help="Only the runs of this controller (its controller_name, or host name).")
@click.option("--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON array of the rows, for scripts.")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def history_cmd(ctx: click.Context, runbook: str | None, limit: int, outcome: str | None, since: Any,
                controller: str | None, fmt: str, audit_url: str | None) -> None:
    """Recent runs, newest first: when, what, how it ended, who ran it from where, on which controller."""
    from technician_ops.api import history

    rows = history(_project(ctx, audit_url=audit_url), runbook, limit=limit, outcome=outcome, since=since,
                   controller=controller)
    if fmt == "json":
        import json

        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no runs recorded")
        return
    from technician_ops.outputs.render import printable

    for r in rows:  # what a record says is data: a peer sharing the store could have written any text
        check = " (check)" if r.get("check") else ""
        click.echo(printable(f"{r['run_id']}  {str(r.get('started_at'))[:19]}  {r['runbook']:<28} "
                             f"{str(r.get('outcome')):<16} {r.get('user')}/{r.get('origin')} on {r.get('controller')}"
                             + (f" via {','.join(r['nodes'])}" if r.get("nodes") else "") + check))


@cli.group("schedule")
def schedule_group() -> None:
    """Cron and systemd entries for runbooks with a schedule."""


@schedule_group.command("list")
@click.pass_context
def schedule_list_cmd(ctx: click.Context) -> None:
    """Scheduled runbooks and their next three fire times."""
    from technician_ops.api import schedule
    from technician_ops.runbook.cron import next_fire_times

    items = schedule(_project(ctx), warn=_warn)
    if not items:
        click.echo("no runbook has a schedule")
    for e in items:
        times = ", ".join(t.strftime("%Y-%m-%d %H:%M") for t in next_fire_times(e.schedule, 3)) if not e.problem else "-"
        click.echo(f"{e.runbook:28} {e.schedule:16} next: {times}")
        for note in ([e.problem] if e.problem else []) + list(e.warnings):
            click.echo(f"    {note}")


@schedule_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["crontab", "cron.d", "systemd"]), default="crontab", show_default=True,
              help="crontab: lines for 'crontab -e'; cron.d: a file for /etc/cron.d (with a user field); "
                   "systemd: .service/.timer units.")
@click.option("--bin", "binary", type=click.Path(), help="technician-ops executable (default: the one on PATH).")
@click.option("--log-dir", type=click.Path(file_okay=False),
              help="Where scheduled runs log; made by the job if missing (cron default: .technician-ops/logs; "
                   "systemd default: the journal).")
@click.option("--user", help="cron.d: the user the lines run as (default: the current user); systemd: User=.")
@click.option("-o", "--output-dir", "out", type=click.Path(file_okay=False), help="systemd: write the unit files here.")
@click.pass_context
def schedule_export_cmd(ctx: click.Context, fmt: str, binary: str | None, log_dir: str | None, user: str | None,
                        out: str | None) -> None:
    """Print crontab or /etc/cron.d lines (or write systemd .service/.timer units) for scheduled runbooks."""
    import shutil
    from pathlib import Path

    from technician_ops.api import schedule_export

    if out and fmt != "systemd":
        where = "> /etc/cron.d/technician-ops" if fmt == "cron.d" else "| crontab - (see docs/ci.md)"
        raise click.UsageError(f"-o/--output-dir writes systemd units; send {fmt} output on instead: {where}")
    exe = binary or shutil.which("technician-ops") or str(Path(sys.executable).parent / "technician-ops")
    exported = schedule_export(_project(ctx), fmt, binary=str(Path(exe).resolve()),
                               log_dir=Path(log_dir) if log_dir else None, user=user, warn=_warn)
    if isinstance(exported, str):
        click.echo(exported, nl=False)
        return
    for unit, text in exported.items():
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / unit).write_text(text)
            click.echo(f"wrote {Path(out) / unit}")
        else:
            click.echo(f"# --- {unit}\n{text}")


@cli.group("audit")
def audit_group() -> None:
    """Verify or export the tamper-evident audit log."""


@audit_group.command("verify")
@click.option("--anchor", type=click.Path(dir_okay=False, exists=True), help="An anchor file from 'audit anchor': "
              "the chain must still hold the record it names (catches deleted newest records, an erased store).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def audit_verify_cmd(ctx: click.Context, anchor: str | None, audit_url: str | None) -> None:
    """Check the hash chain; report the first edited, deleted, inserted or reordered record."""
    from pathlib import Path

    from technician_ops.api import audit_verify

    result = audit_verify(_project(ctx, audit_url=audit_url), anchor=Path(anchor) if anchor else None)
    click.echo(f"audit log intact: {result.checked} record(s) verified" + (f", anchor {anchor} held" if anchor else ""))


@audit_group.command("anchor")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the anchor (keep it where the store's writers cannot change it).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def audit_anchor_cmd(ctx: click.Context, out: str, audit_url: str | None) -> None:
    """Write the chain head (seq, hash) to a file: a witness for 'audit verify --anchor'."""
    from pathlib import Path

    from technician_ops.api import audit_anchor

    anchor = audit_anchor(_project(ctx, audit_url=audit_url), Path(out))
    click.echo(f"anchor written to {out}: record seq {anchor['seq']}, hash {anchor['hash'][:16]}...")


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def audit_export_cmd(ctx: click.Context, fmt: str, out: str | None, audit_url: str | None) -> None:
    """Every finished record in chain order, one canonical JSON object per line."""
    from technician_ops.api import audit_export

    project = _project(ctx, audit_url=audit_url)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            count = audit_export(project, fh)
        click.echo(f"{count} record(s) written to {out}", err=True)
    else:
        audit_export(project, sys.stdout)


@cli.command("report")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True,
              help="md: Markdown for a ticket or chat; html: one self-contained page (no script, no request).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def report_cmd(ctx: click.Context, run_id: str, fmt: str, out: str | None, audit_url: str | None) -> None:
    """A run as it happened: the runbook's text with each step's result on every host, the rollback,
    artifacts, parameters and audit-chain links."""
    from pathlib import Path

    from technician_ops.api import report

    text = report(_project(ctx, audit_url=audit_url), run_id, fmt=fmt, out=Path(out) if out else None)
    if out:
        click.echo(f"report written to {out}", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))


@cli.group("backups")
def backups_group() -> None:
    """Backups kept for undoing runs."""


@backups_group.command("list")
@click.argument("run_id", required=False)
@click.option("--no-verify", is_flag=True, help="Do not re-hash each artefact (faster for big dumps).")
@click.pass_context
def backups_list_cmd(ctx: click.Context, run_id: str | None, no_verify: bool) -> None:
    """Stored backups, of one run or of all, with whether each still matches its sha256."""
    import datetime as dt

    from technician_ops.api import list_backups

    rows = list_backups(_project(ctx), run_id, verify=not no_verify)
    if not rows:
        click.echo("no backups stored")
        return
    for b in rows:
        when = dt.datetime.fromtimestamp(b.created_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{b.run_id}  {when}  {b.runbook:<24} {b.host:<12} {b.step:<20} {b.kind:<8} "
                   f"{b.size:>10}  {b.sha256[:12]}  {b.status}")


def _undo_command(ctx: click.Context, action: str, run_id: str, yes: bool, output: str, skip_preflight: bool,
                  audit_url: str | None) -> None:
    from technician_ops import api
    from technician_ops.outputs.console import JsonView, TextView

    interactive = sys.stdin.isatty() and output == "text"

    def prompt(what: str, text: str) -> bool:
        click.echo(text)
        return click.confirm(f"{what.capitalize()} now?", default=False)

    undo = api.rollback_run if action == "rollback" else api.recover_run
    with _Cancel() as stop:
        result = undo(_project(ctx, audit_url=audit_url), run_id, yes=yes, prompt=prompt if interactive else None,
                      sinks=[TextView() if output == "text" else JsonView()], skip_preflight=skip_preflight,
                      cancelled=stop)
    raise SystemExit(int(result.exit_code))


_UNDO_OPTIONS = [
    click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)."),
    click.option("--output", "output", type=click.Choice(["text", "json"]), default="text", show_default=True),
    click.option("--skip-preflight", is_flag=True, help="Do not check SSH reachability of the targets first."),
    click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL"),
]


def _undo_options(func: Any) -> Any:
    for option in reversed(_UNDO_OPTIONS):
        func = option(func)
    return func


@cli.command("rollback")
@click.argument("run_id")
@_undo_options
@click.pass_context
def rollback_cmd(ctx: click.Context, run_id: str, yes: bool, output: str, skip_preflight: bool,
                 audit_url: str | None) -> None:
    """Undo an earlier succeeded run from its recorded backups and secret versions (its own run)."""
    _undo_command(ctx, "rollback", run_id, yes, output, skip_preflight, audit_url)


@cli.command("recover")
@click.argument("run_id")
@_undo_options
@click.pass_context
def recover_cmd(ctx: click.Context, run_id: str, yes: bool, output: str, skip_preflight: bool,
                audit_url: str | None) -> None:
    """Converge a killed (interrupted) run: resolve recorded intents, undo what it did (its own run)."""
    _undo_command(ctx, "recover", run_id, yes, output, skip_preflight, audit_url)


@cli.command("postmortem")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), help="Write the draft here (default: stdout).")
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def postmortem_cmd(ctx: click.Context, run_ids: tuple[str, ...], out: str | None, audit_url: str | None) -> None:
    """Draft a blameless post-mortem (Markdown) from the records of one or more runs."""
    from pathlib import Path

    from technician_ops.api import postmortem

    text = postmortem(_project(ctx, audit_url=audit_url), list(run_ids), out=Path(out) if out else None)
    if out:
        click.echo(f"post-mortem draft written to {out}", err=True)
    else:
        click.echo(text, nl=False)


class _Since(click.ParamType):
    """A start time: YYYY-MM-DD[THH:MM[:SS]] (UTC unless it carries an offset), or an age: 7d, 12h, 2w."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import datetime as dt
        import re

        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        try:
            age = re.fullmatch(r"(\d{1,6})([hdw])", text)
            if age:
                unit = {"h": "hours", "d": "days", "w": "weeks"}[age.group(2)]
                return dt.datetime.now(dt.timezone.utc) - dt.timedelta(**{unit: int(age.group(1))})
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?", text):
                raise ValueError(text)
            when = dt.datetime.fromisoformat(text)
            return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
        except (ValueError, OverflowError):
            self.fail(f"{text!r} is not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS, in UTC unless it has an offset) "
                      "nor an age (7d, 12h, 2w)", param, ctx)


@cli.command("stats")
@click.argument("runbook", required=False)
@click.option("--since", type=_Since(), help="Only runs started at or after DATE (UTC), or in the last 7d, 12h, 2w.")
@click.option("--metrics-file", type=click.Path(dir_okay=False),
              help="Also write the figures as Prometheus gauges to this file (its own: replaced whole).")
@click.option("--output", "output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--audit-url", envvar="TECHNICIAN_OPS_AUDIT_URL")
@click.pass_context
def stats_cmd(ctx: click.Context, runbook: str | None, since: Any, metrics_file: str | None, output: str,
              audit_url: str | None) -> None:
    """Per runbook: runs by outcome, rates, p50/p95 duration, time to recover; --check runs apart."""
    import json
    from pathlib import Path

    from technician_ops.api import stats
    from technician_ops.outputs.stats import text

    report = stats(_project(ctx, audit_url=audit_url), runbook, since=since,
                   metrics_file=Path(metrics_file) if metrics_file else None)
    click.echo(json.dumps(report.to_json(), indent=2) if output == "json" else text(report))
    if report.metrics_file is not None:
        click.echo(f"metrics written to {report.metrics_file}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the only place that turns errors into exit codes."""
    try:
        cli.main(args=argv, prog_name="technician-ops", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as exc:
        exc.show()
        sys.exit(int(ExitCode.USAGE))
    except TechnicianOpsError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(int(exc.exit_code))
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception:
        log = _debug_log(argv)
        click.echo(f"internal error: this is a bug in technician-ops; the traceback is in {log}", err=True)
        sys.exit(int(ExitCode.SOFTWARE))


def _debug_log(argv: list[str] | None = None) -> Path:
    """Append the traceback to ``debug.log`` in the project's state dir (0600, never through a symlink).

    The state dir is the project's own (``--project``, TECHNICIAN_OPS_PROJECT, else the nearest parent
    with runbooks/; its configuration may move it), else ~/.cache/technician-ops.
    """
    import traceback
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    root = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--project"), None)
    try:
        from technician_ops.project import load_project

        directory = load_project(Path(root) if root else None).state_dir
    except Exception:  # noqa: BLE001 - the project itself may be what is broken
        directory = Path.home() / ".cache" / "technician-ops"
    path = directory / "debug.log"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a") as fh:
            traceback.print_exc(file=fh)
    except OSError:
        traceback.print_exc()
    return path


if __name__ == "__main__":  # pragma: no cover
    main()
