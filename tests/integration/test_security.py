"""Security hardening (docs/security.md), each item as an operator or an attacker would try it,
through the real CLI, ansible-runner and local hosts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from technician_ops.errors import ExitCode

pytestmark = pytest.mark.integration


def cli(demo, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=demo.root)


def records(demo) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    proc = cli(demo, "audit", "export")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


# ------------------------------------------------------------------ 1. template injection in hosts=


INJECT = """---
hosts: "{{ target }}"
params:
  target: {type: string, required: true}
---

```yaml {name=look kind=check}
- ansible.builtin.ping:
```

```yaml {name=look-again kind=check hosts="{{ target }}"}
- ansible.builtin.ping:
```
"""


@pytest.mark.parametrize("how", ["param", "env"])
def test_a_parameter_in_hosts_never_becomes_a_template(demo, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("inject", INJECT)
    pwned = tmp_path / "pwned"
    value = "{{ lookup('pipe', 'touch " + str(pwned) + "') }}"
    args, env = (["-p", f"target={value}"], None) if how == "param" else ([], {"TECHNICIAN_OPS_PARAM_TARGET": value})
    proc = cli(demo, "run", "inject", *args, env=env)
    assert proc.returncode == ExitCode.DATAERR, proc.stdout + proc.stderr
    assert "template syntax" in proc.stderr and "inject.md:" in proc.stderr
    assert not pwned.exists()
    ok = cli(demo, "run", "inject", "-p", "target=web1")  # an ordinary pattern still works
    assert ok.returncode == 0, ok.stdout + ok.stderr


# ------------------------------------------------------------------ 2. parameter fidelity

TRICKY = ["1", "yes", "no", "on", "off", "true", "False", "0x10", "012", "+1", "1e3", "1_000", "null", "~", ".inf",
          "-.inf", ".nan", "2026-11-30", "{{ 7*7 }}", "{% raw %}x", "{# c #}", "$(id)", "`id`", "a'b\"c", " lead",
          "trail ", "ünïcödé", "a\\nb", "%s %d", "=x", "a: b", "- item", "[1, 2]", "{a: 1}", "#hash", "*star", "&amp"]


def _fidelity_runbook(names: list[str], *, defaults: dict[str, str] | None = None) -> str:
    params = "\n".join(f"  p{i}: {{type: string, " + (f"default: {json.dumps(defaults[n])}}}" if defaults else "required: true}")
                       for i, n in enumerate(names))
    as_json = "{" + ", ".join(f"'p{i}': p{i}" for i in range(len(names))) + "}"
    types = "{" + ", ".join(f"'p{i}': p{i} | type_debug" for i in range(len(names))) + "}"
    env_lines = "\n".join(f'printf %s "$P{i}" > "$OUT/env-p{i}"' for i in range(len(names)))
    return f"""---
hosts: web1
params:
{params}
  out: {{type: string, required: true}}
---

```yaml {{name=ansible undo=none}}
- ansible.builtin.copy:
    dest: "{{{{ out }}}}/ansible.json"
    content: "{{{{ {as_json} | to_json }}}}"
- ansible.builtin.copy:
    dest: "{{{{ out }}}}/types.json"
    content: "{{{{ {types} | to_json }}}}"
```

```sh {{name=shell undo=none}}
{env_lines}
```
"""


def _assert_arrived(out: Path, values: list[str]) -> None:
    seen = json.loads((out / "ansible.json").read_text())
    types = json.loads((out / "types.json").read_text())
    for i, value in enumerate(values):
        assert seen[f"p{i}"] == value, (value, seen[f"p{i}"])
        assert types[f"p{i}"] in ("str", "AnsibleUnsafeText", "_AnsibleTaggedStr"), (value, types[f"p{i}"])
        assert (out / f"env-p{i}").read_bytes() == value.encode(), value


@pytest.mark.parametrize("path", ["-p", "env", "default"])
def test_parameter_values_arrive_byte_identical_everywhere(demo, tmp_path: Path, path: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    out.mkdir()
    defaults = {n: n for n in TRICKY} if path == "default" else None
    demo.write_runbook("fidelity", _fidelity_runbook(TRICKY, defaults=defaults))
    args: list[str] = ["-p", f"out={out}"]
    env: dict[str, str] = {}
    if path == "-p":
        args += [a for i, v in enumerate(TRICKY) for a in ("-p", f"p{i}={v}")]
    elif path == "env":
        env = {f"TECHNICIAN_OPS_PARAM_P{i}": v for i, v in enumerate(TRICKY)}
    proc = cli(demo, "run", "fidelity", *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_arrived(out, TRICKY)
    assert [records(demo)[-1]["params"][f"p{i}"] for i in range(len(TRICKY))] == TRICKY


def test_typed_parameters_are_typed_exactly(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("typed", """---
hosts: web1
params:
  n: {type: int, required: true}
  pick: {type: choice, choices: ["1", "yes"], default: "1"}
---

```yaml {name=t kind=check}
- ansible.builtin.assert:
    that: ["n | type_debug == 'int'", "pick | type_debug != 'int'", "pick == '1'"]
```
""")
    for bad in ("1_000", "١٢", "0x10", "1.0", " "):
        proc = cli(demo, "run", "typed", "-p", f"n={bad}")
        assert proc.returncode == ExitCode.DATAERR, (bad, proc.stderr)
        assert "must be an integer" in proc.stderr
    ok = cli(demo, "run", "typed", "-p", "n=-12")
    assert ok.returncode == 0, ok.stdout + ok.stderr


# ------------------------------------------------------------------ 3. reserved names


@pytest.mark.parametrize("name", ["path", "home", "ld_preload", "pythonpath", "ansible_become", "technician_ops_x"])
def test_a_parameter_may_not_clobber_the_environment(demo, name: str) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("clobber", f"---\nhosts: web\nparams:\n  {name}: {{type: string, default: x}}\n---\n\n"
                       "```sh {name=s undo=none}\necho hi\n```\n")
    proc = cli(demo, "lint", str(demo.root / "runbooks" / "clobber.md"))
    assert proc.returncode == ExitCode.DATAERR and f"clobber.md:4: parameter name {name!r} is reserved" in proc.stdout


# ------------------------------------------------------------------ 4, 5. credentials and the canary


CANARY = "CaNaRy-9f3b1c"
VAULT_CANARY = "s.vaulttoken-7d2e"


def _canary_runbook(demo, *, fail: bool = False, sleep: bool = False) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("canary", f"""---
hosts: web
params:
  token: {{type: secret, required: true}}
  dsn: {{type: string, default: ""}}
---

```sh {{name=use undo=none}}
printf '%s' "$TOKEN" | sha256sum > "$STATE/used" 2>/dev/null || true
echo "the token is $TOKEN"
env > "{demo.hosts_dir}/env-$TECHNICIAN_OPS_HOST"
```

```sh {{name=later undo=none}}
{"sleep 30" if sleep else "true"}
{"exit 3" if fail else "true"}
```
""")


def _hits(root: Path, *needles: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


@pytest.mark.parametrize("ending", ["normal", "failed", "sigterm", "sigkill"])
def test_no_credential_reaches_any_file_however_the_run_ends(demo, ending: str) -> None:  # type: ignore[no-untyped-def]
    _canary_runbook(demo, fail=ending == "failed", sleep=ending in ("sigterm", "sigkill"))
    env = {"TECHNICIAN_OPS_PARAM_TOKEN": CANARY, "VAULT_TOKEN": VAULT_CANARY, "AWS_SECRET_ACCESS_KEY": VAULT_CANARY}
    args = [sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "run", "canary",
            "-p", f"dsn=postgresql://app:{CANARY}@db/app"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    if ending in ("sigterm", "sigkill"):
        deadline = time.monotonic() + 60
        while not (demo.hosts_dir / "env-web2").exists() or not (demo.hosts_dir / "env-web1").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert CANARY not in out + err and VAULT_CANARY not in out + err
    time.sleep(1)
    state = demo.root / ".technician-ops"
    assert _hits(state, CANARY, VAULT_CANARY) == []
    for host in ("web1", "web2"):  # a task never sees the tool's variables or the controller's credentials
        seen = (demo.hosts_dir / f"env-{host}").read_text()
        assert "TECHNICIAN_OPS_PARAM_" not in seen and "VAULT_TOKEN" not in seen and "AWS_SECRET" not in seen
        env = dict(line.split("=", 1) for line in seen.splitlines() if "=" in line)
        assert env.get("TECHNICIAN_OPS_CONTROL_TOKEN", "") == "" and env.get("TECHNICIAN_OPS_CONTROL_SOCKET", "") == ""
    rec = records(demo)[-1]
    assert rec["params"]["dsn"] == "postgresql://app:********@db/app"  # a secret pasted into a public value
    show = cli(demo, "show", rec["run_id"])
    assert CANARY not in show.stdout


@pytest.mark.parametrize("secret", ["0", "a"])
def test_a_one_character_secret_never_breaks_the_record(demo, secret: str) -> None:  # type: ignore[no-untyped-def]
    _canary_runbook(demo)
    proc = cli(demo, "run", "canary", env={"TECHNICIAN_OPS_PARAM_TOKEN": secret})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shorter th" in proc.stdout  # the warning (itself masked where it holds the secret)
    rec = records(demo)[-1]
    assert rec["outcome"] == "succeeded" and rec["ended_at"].startswith("20") and len(rec["run_id"]) == 36
    for command in (["history"], ["audit", "verify"], ["show", rec["run_id"]]):
        again = cli(demo, *command)
        assert again.returncode == 0, (command, again.stderr)


# ------------------------------------------------------------------ 7. schedule export


@pytest.mark.parametrize("name", ["nightly\n* * * * * root touch /tmp/x", "../../etc/cron.d/x", "a b"])
def test_a_runbook_name_is_a_slug(demo, name: str) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("sched", f"---\nname: {json.dumps(name)}\nhosts: web\nschedule: '@daily'\n---\n\n"
                       "```yaml {name=c kind=check}\n- ansible.builtin.ping:\n```\n")
    lint = cli(demo, "lint", str(demo.root / "runbooks" / "sched.md"))
    assert lint.returncode == ExitCode.DATAERR and "must be a slug" in lint.stdout
    export = cli(demo, "schedule", "export")
    assert export.returncode == 0 and "touch /tmp/x" not in export.stdout and "etc/cron.d" not in export.stdout


# ------------------------------------------------------------------ 8. what the audit log proves


def _two_runs(demo) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    for _ in range(2):
        assert cli(demo, "run", "deploy-config", "-p", "version=1", "-p", f"demo_root={demo.hosts_dir}").returncode == 0
    return records(demo)


def test_history_shows_only_what_the_chain_covers(demo) -> None:  # type: ignore[no-untyped-def]
    first = _two_runs(demo)[0]
    db = demo.root / ".technician-ops" / "audit.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET user_name = 'mallory', origin_type = 'ci' WHERE run_id = ?", (first["run_id"],))
    history = cli(demo, "history")
    assert "mallory" not in history.stdout and f"{first['operator']['user']}/" in history.stdout


def test_events_added_after_the_seal_are_caught(demo) -> None:  # type: ignore[no-untyped-def]
    first = _two_runs(demo)[0]
    db = demo.root / ".technician-ops" / "audit.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0  # sealed runs keep none
        conn.execute("INSERT INTO events (run_id, n, kind, ts, data) VALUES (?, 99, 'notice', 0, '{}')",
                     (first["run_id"],))
    proc = cli(demo, "audit", "verify")
    assert proc.returncode == ExitCode.DATAERR and "events table" in proc.stderr
    assert first["events_sha256"] and len(first["events_sha256"]) == 64


def test_an_anchor_catches_deleted_newest_records_and_an_erased_store(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recs = _two_runs(demo)
    anchor = tmp_path / "anchor.json"
    made = cli(demo, "audit", "anchor", "-o", str(anchor))
    assert made.returncode == 0, made.stderr
    assert cli(demo, "audit", "verify", "--anchor", str(anchor)).returncode == 0
    db = demo.root / ".technician-ops" / "audit.db"
    with sqlite3.connect(db) as conn:  # delete the newest record and move the head back: plain verify is fooled
        conn.execute("DELETE FROM runs WHERE run_id = ?", (recs[-1]["run_id"],))
        conn.execute("UPDATE chain_head SET seq = ?, hash = ?, run_id = ?", (recs[0]["seq"], recs[0]["hash"], recs[0]["run_id"]))
    assert cli(demo, "audit", "verify").returncode == 0
    caught = cli(demo, "audit", "verify", "--anchor", str(anchor))
    assert caught.returncode == ExitCode.DATAERR and "deleted" in caught.stderr
    db.write_bytes(b"")  # erased
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    erased = cli(demo, "audit", "verify")
    assert erased.returncode == ExitCode.DATAERR and "0 bytes" in erased.stderr


def test_a_garbage_schema_version_is_named_not_a_crash(demo) -> None:  # type: ignore[no-untyped-def]
    _two_runs(demo)
    with sqlite3.connect(demo.root / ".technician-ops" / "audit.db") as conn:
        conn.execute("UPDATE meta SET value = 'x1' WHERE key = 'schema_version'")
    for command in (["history"], ["audit", "verify"], ["run", "deploy-config", "-p", "version=2"]):
        proc = cli(demo, *command)
        assert proc.returncode == ExitCode.DATAERR, (command, proc.stderr)
        assert "schema version" in proc.stderr and "internal error" not in proc.stderr


def test_a_read_only_store_can_still_be_read(demo) -> None:  # type: ignore[no-untyped-def]
    _two_runs(demo)
    state = demo.root / ".technician-ops"
    script = (f"mount --bind {state} {state} && mount -o remount,bind,ro {state} && "
              f"{sys.executable} -m technician_ops.cli --project {demo.root} history && "
              f"{sys.executable} -m technician_ops.cli --project {demo.root} audit verify")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if "Operation not permitted" in proc.stderr and "mount" in proc.stderr:
        pytest.skip("this machine does not allow a private mount namespace")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deploy-config" in proc.stdout and "audit log intact: 2 record(s)" in proc.stdout


def test_postgres_down_is_a_temporary_failure(demo) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli(demo, "history", "--audit-url", f"postgresql://a:pw@127.0.0.1:{port}/x?connect_timeout=2")
    assert proc.returncode == ExitCode.TEMPFAIL, proc.stderr
    assert "pw@" not in proc.stderr


# ------------------------------------------------------------------ 9. files written where they should not be


def test_the_debug_log_stays_in_the_state_dir_and_follows_no_link(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = demo.root / ".technician-ops"
    state.mkdir(exist_ok=True)
    target = tmp_path / "elsewhere"
    (state / "debug.log").symlink_to(target)
    crash = ("import sys; sys.argv = ['technician-ops', '--project', %r, 'list'];"
             "import technician_ops.api as api;"
             "api.list_runbooks = lambda *a, **k: 1 / 0;"
             "from technician_ops.cli import main; main()") % str(demo.root)
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, cwd=demo.root)
    assert proc.returncode == ExitCode.SOFTWARE and "internal error" in proc.stderr
    assert not target.exists()  # the planted link was not followed
    (state / "debug.log").unlink()
    proc = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, cwd=demo.root)
    log = state / "debug.log"
    assert log.is_file() and oct(log.stat().st_mode & 0o777) == "0o600" and "ZeroDivisionError" in log.read_text()


def test_reports_write_only_regular_files_and_never_change_the_outcome(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "report.xml"
    link.symlink_to(victim)
    proc = cli(demo, "run", "deploy-config", "-p", "version=1", "-p", f"demo_root={demo.hosts_dir}",
               "--junit", str(link), "--metrics-file", "/dev/null")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n" and link.is_symlink()
    assert "JUnit report not written" in proc.stderr and "metrics not written" in proc.stderr
    unwritable = cli(demo, "run", "deploy-config", "-p", "version=1", "-p", f"demo_root={demo.hosts_dir}",
                     "--junit", "/proc/technician-ops/report.xml")
    assert unwritable.returncode == 0 and "JUnit report not written" in unwritable.stderr


# ------------------------------------------------------------------ 10. bad input that still escaped


def test_bad_input_is_a_clear_error_never_a_crash(demo) -> None:  # type: ignore[no-untyped-def]
    runbooks = demo.root / "runbooks"
    depth = 5000
    (runbooks / "deep.md").write_text("---\nhosts: web\nvars: " + "[" * depth + "]" * depth + "\n---\n\n"
                                      "```yaml {name=a kind=check}\n- ansible.builtin.ping:\n```\n")
    os.mkfifo(runbooks / "fifo.md")
    (runbooks / "huge-timeout.md").write_text("---\nhosts: web\n---\n\n```yaml {name=a kind=check timeout=99999999999}\n"
                                              "- ansible.builtin.ping:\n```\n")
    for name, message in (("deep.md", "nested too deeply"), ("fifo.md", "not a regular file"),
                          ("huge-timeout.md", "longer than Ansible accepts")):
        proc = cli(demo, "lint", str(runbooks / name), timeout=30)
        assert proc.returncode == ExitCode.DATAERR and message in proc.stdout, (name, proc.stdout, proc.stderr)
    for name in ("deep", "huge-timeout"):
        run = cli(demo, "run", name, timeout=30)
        assert run.returncode == ExitCode.DATAERR and "internal error" not in run.stderr


@pytest.mark.parametrize("body", ["true", "false", "on"])
def test_a_shell_body_that_looks_like_yaml_runs_as_a_script(demo, body: str) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("tiny", f"---\nhosts: web1\n---\n\n```sh {{name=s kind=check}}\n{body}\n```\n")
    proc = cli(demo, "run", "tiny")
    expected = ExitCode.OK if body == "true" else ExitCode.FAILED  # what sh makes of it
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout  # the generated playbook itself is valid


def test_one_record_that_cannot_be_finished_never_blocks_the_store(demo) -> None:  # type: ignore[no-untyped-def]
    _two_runs(demo)
    db = demo.root / ".technician-ops" / "audit.db"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is gone: its 'running' record is stale and gets reaped
    with sqlite3.connect(db) as conn:
        host = conn.execute("SELECT writer_host FROM runs LIMIT 1").fetchone()[0]
        conn.execute("INSERT INTO runs (run_id, runbook, path, started_at, outcome, check_run, user_name, origin_type, "
                      "writer_host, writer_pid, writer_start, header) VALUES ('bad-run', 'x', 'x', "
                      "'2026-01-01T00:00:00.000000Z', 'running', 0, 'u', 'o', ?, ?, '0', 'not json')", (host, dead.pid))
    for command in (["history"], ["audit", "verify"], ["run", "deploy-config", "-p", "version=3", "-p", f"demo_root={demo.hosts_dir}"]):
        proc = cli(demo, *command)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
