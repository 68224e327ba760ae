"""Step output on real runs: shown, in JSON, in the record, passed to later steps; bounded and secret-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DISK = """---
hosts: web
---
# Clean up only where the disk is full

```sh {name=df kind=check}
df -P /
```

```sh {name=disk kind=check}
cat "$PCT_FILE" 2>/dev/null || printf '{"used_pct": 10}\\n'
```

```sh {name=clean undo=none when="{{ steps.disk.json.used_pct | int > 90 }}"}
echo "cleaning at $STEP_DISK_STDOUT"
```

```yaml {name=report kind=check}
- ansible.builtin.debug: {msg: "clean skipped here: {{ steps.clean.skipped }}; df rc {{ steps.df.rc }}"}
```
"""


def cli(demo, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def _disk_runbook(demo) -> None:  # type: ignore[no-untyped-def]
    text = DISK.replace('"$PCT_FILE"', f'"{demo.hosts_dir}/$TECHNICIAN_OPS_HOST/pct"')
    demo.write_runbook("disk", text)
    (demo.host_dir("web1") / "pct").write_text('{"used_pct": 95}\n')
    (demo.host_dir("web2") / "pct").write_text('{"used_pct": 40}\n')


def test_output_is_shown_recorded_and_decides_a_later_step(demo) -> None:  # type: ignore[no-untyped-def]
    _disk_runbook(demo)
    text = cli(demo, "run", "disk")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "│ Filesystem" in text.stdout and "Mounted on" in text.stdout  # df's lines, under the step
    assert "cleaning at" in text.stdout and 'used_pct": 95' in text.stdout
    assert "web2 skipped" in text.stdout and "when: {{ steps.disk.json.used_pct | int > 90 }} was false" in text.stdout
    as_json = cli(demo, "run", "disk", "--output", "json")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    results = {(e["step"], e["host"]): e for e in events if e["event"] == "host_result"}
    assert results[("df", "web1")]["output"]["stdout"].startswith("Filesystem")
    assert results[("df", "web1")]["output"]["rc"] == 0
    assert results[("clean", "web1")]["status"] == "changed" and results[("clean", "web2")]["status"] == "skipped"
    assert "was false" in results[("clean", "web2")]["reason"]
    assert results[("report", "web1")]["output"]["msg"] == "clean skipped here: False; df rc 0"
    assert results[("report", "web2")]["output"]["msg"] == "clean skipped here: True; df rc 0"
    run_id = events[0]["run_id"]
    shown = cli(demo, "show", run_id)
    assert "| Filesystem" in shown.stdout and "web2: skipped" in shown.stdout and "was false" in shown.stdout
    one = cli(demo, "show", run_id, "--step", "df", "--host", "web2")
    assert one.returncode == 0 and one.stdout.startswith("df on web2: ok (rc 0)") and "Mounted on" in one.stdout


def test_huge_and_binary_output_is_bounded_and_stored_safely(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("loud", """---
hosts: web1
---
```sh {name=loud kind=check}
head -c 10000000 /dev/zero | tr '\\0' 'x'
printf '\\n nul \\000 here\\n'
echo done
```

```sh {name=binary kind=check}
printf 'bad bytes: \\377\\376\\n'
```
""")
    proc = cli(demo, "run", "loud", "--output", "json")
    # ansible-core refuses a task's output that is not UTF-8 ("Refusing to deserialize an invalid UTF8
    # string"): that step fails, with Ansible's reason, and nothing of ours breaks on it.
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(proc.stdout) < 400_000  # the event stream did not carry 10 MB
    results = {e["step"]: e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] == "host_result"}
    out = results["loud"]["output"]
    assert out["truncated"] is True and out["bytes"] > 10_000_000 and len(out["sha256"]) == 64
    assert out["stdout"].startswith("xxxx") and out["stdout"].rstrip().endswith("done")
    assert "\x00" not in out["stdout"] and "nul \ufffd here" in out["stdout"]
    assert results["binary"]["status"] == "failed" and "UTF8" in results["binary"]["error"]
    db = demo.root / ".technician-ops" / "audit.db"
    assert db.stat().st_size < 2_000_000
    run_id = results["loud"]["run_id"]
    again = cli(demo, "show", run_id, "--step", "loud", "--host", "web1")
    assert again.returncode == 0 and "characters cut" in again.stdout and "done" in again.stdout
    assert cli(demo, "show", run_id).returncode == 0
    assert cli(demo, "audit", "verify").returncode == 0


def test_a_secret_printed_by_a_step_is_masked_everywhere(demo) -> None:  # type: ignore[no-untyped-def]
    secret = "CaNaRy-out-" + os.urandom(4).hex()
    (demo.host_dir("web1") / "leak").write_text(f"token={secret}\n")
    demo.write_runbook("leaky", f"""---
hosts: web1
params:
  token: {{type: secret, required: true}}
---
```sh {{name=uses undo=none}}
test -n "$TOKEN"
```

```sh {{name=prints kind=check}}
cat {demo.host_dir("web1")}/leak
```

```yaml {{name=echoes kind=check}}
- ansible.builtin.debug: {{msg: "{{{{ steps.prints.stdout }}}}"}}
```
""")
    env = {"TECHNICIAN_OPS_PARAM_TOKEN": secret}
    text = cli(demo, "run", "leaky", env=env)
    as_json = cli(demo, "run", "leaky", "--output", "json", env=env)
    assert text.returncode == 0 and as_json.returncode == 0, text.stdout + text.stderr
    assert "token=********" in text.stdout and secret not in text.stdout + text.stderr
    assert secret not in as_json.stdout and "token=********" in as_json.stdout
    run_id = json.loads(as_json.stdout.splitlines()[0])["run_id"]
    shown = cli(demo, "show", run_id, "--step", "echoes", "--host", "web1")
    assert "token=********" in shown.stdout and secret not in shown.stdout
    for command in (["report", run_id], ["report", run_id, "--format", "html"], ["postmortem", run_id]):
        made = cli(demo, *command)
        assert made.returncode == 0, (command, made.stderr)
        assert secret not in made.stdout + made.stderr, command
        assert command[0] == "postmortem" or "token=********" in made.stdout  # the report shows every output
    hits = [p for p in (demo.root / ".technician-ops").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert hits == []
