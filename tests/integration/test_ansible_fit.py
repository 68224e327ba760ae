"""A run behaves as ansible-playbook would: the team's ansible.cfg, facts, -e, --limit, --tags, --diff.

Real runs through ansible-runner against the demo's local-connection hosts.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from technician_ops.api import RunRequest, run, show
from technician_ops.errors import ExitCode, ParameterError
from technician_ops.events import Outcome
from technician_ops.outputs.console import JsonView

pytestmark = pytest.mark.integration
FOREIGN = Path(__file__).parent.parent / "fixtures" / "foreign"


def _run(demo, name: str, **kw):  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    request = RunRequest(name, kw.pop("params", {}), **kw)
    from technician_ops.audit import open_store

    project = demo.project()
    store = open_store(project.audit_url, project.root)
    try:
        result = run(request, project, [JsonView("", stream)], audit=store)
        record = store.get(result.run_id)
    finally:
        store.close()
    return result, [json.loads(line) for line in stream.getvalue().splitlines()], record


TEAM_ROLE = {
    "tasks/main.yml": "- name: write the os family\n"
                      "  ansible.builtin.copy: {dest: \"{{ state_dir }}/family\", content: \"{{ ansible_os_family }} {{ who | default('nobody') }}\\n\"}\n"
                      "  notify: note it\n  tags: [family]\n",
    "handlers/main.yml": "- name: note it\n  ansible.builtin.copy: {dest: \"{{ state_dir }}/handled\", content: \"yes\\n\"}\n",
}
FIT = """---
hosts: web
params:
  version: {type: int, default: 1}
---
```yaml {name=site kind=playbook undo=none}
file: playbooks/site.yml
```

```yaml {name=write-version}
- ansible.builtin.copy: {dest: "{{ state_dir }}/version", content: "{{ version }} {{ extra | default('-') }}\\n"}
```

```yaml {rollback=write-version}
- ansible.builtin.copy: {dest: "{{ state_dir }}/undone", content: "{{ extra | default('-') }}\\n"}
```

```yaml {name=fail-if-asked kind=check}
- ansible.builtin.fail: {msg: asked}
  when: fail | default(false) | bool
```
"""


@pytest.fixture
def fit(demo):  # type: ignore[no-untyped-def]
    """The demo project with a team ansible.cfg whose roles_path holds a role that reads facts."""
    for rel, text in TEAM_ROLE.items():
        path = demo.root / "team-roles" / "greet" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (demo.root / "ansible.cfg").write_text("[defaults]\nroles_path = team-roles\nhost_key_checking = False\n"
                                           "timeout = 17\n")
    (demo.root / "playbooks" / "site.yml").write_text("- hosts: web\n  roles: [greet]\n")
    demo.write_runbook("fit", FIT)
    return demo


def test_playbook_with_a_team_role_gathers_facts_and_runs_handlers(fit) -> None:  # type: ignore[no-untyped-def]
    result, events, record = _run(fit, "fit")
    assert result.outcome is Outcome.SUCCEEDED, events
    for host in ("web1", "web2"):
        family = (fit.host_dir(host) / "family").read_text()
        assert family.split()[0] in {"Debian", "RedHat", "Archlinux", "Suse", "Alpine"}  # a fact, gathered
        assert (fit.host_dir(host) / "handled").read_text() == "yes\n"  # the role's handler ran
    tasks = [e["task"] for e in events if e["event"] == "task_start" and e["step"] == "site"]
    assert "Gathering Facts" in tasks and "note it" in tasks
    # The team's ansible.cfg was the base: its timeout stands, host_key_checking is ours (and said).
    assert record["ansible_cfg_base"]["path"] == str(fit.root / "ansible.cfg")
    assert "timeout = 17" in record["ansible_cfg"] and "host_key_checking = True" in record["ansible_cfg"]
    assert f"{fit.root / 'team-roles'}" in record["ansible_cfg"]
    notices = [e["message"] for e in events if e["event"] == "notice"]
    assert any("host_key_checking = False is replaced by True" in n for n in notices)


def test_limit_runs_on_the_limited_hosts_only(fit) -> None:  # type: ignore[no-untyped-def]
    result, events, record = _run(fit, "fit", limit="web:!web2")
    assert result.outcome is Outcome.SUCCEEDED
    assert (fit.host_dir("web1") / "version").exists() and not (fit.host_dir("web2") / "version").exists()
    assert {e["host"] for e in events if e["event"] == "host_result"} == {"web1"}
    assert record["ansible"]["limit"] == "web:!web2"


def test_limit_matching_nothing_refuses_before_anything_runs(fit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterError) as exc:
        _run(fit, "fit", limit="nosuchhost")
    assert "matches no host" in exc.value.message
    with pytest.raises(ParameterError) as exc:
        _run(fit, "fit", limit="db1")
    assert "leaves no host this runbook runs on" in exc.value.message
    assert not list(fit.hosts_dir.glob("*/*"))


@pytest.mark.parametrize("skip", [("always",), ("web", "always")])
def test_the_gates_tag_cannot_be_skipped(fit, skip: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParameterError, match="--skip-tags always: .* cannot be skipped") as exc:
        _run(fit, "fit", skip_tags=(",".join(skip),))
    assert exc.value.exit_code == ExitCode.DATAERR
    assert not list(fit.hosts_dir.glob("*/*"))  # refused before anything ran


def test_tags_select_steps_by_name_and_tasks_by_their_tags(fit) -> None:  # type: ignore[no-untyped-def]
    result, events, _ = _run(fit, "fit", tags=("write-version",))
    ends = {e["step"]: e for e in events if e["event"] == "step_end"}
    assert ends["write-version"]["status"] == "succeeded" and ends["fail-if-asked"]["status"] == "succeeded"  # a gate runs
    # The playbook's plays gather facts whatever the selection, as under ansible-playbook; its tasks did not run.
    assert set(ends["site"]["hosts"].values()) <= {"ok"} and not (fit.host_dir("web1") / "family").exists()
    result, events, _ = _run(fit, "fit", tags=("family",))
    assert result.outcome is Outcome.SUCCEEDED  # facts gathered for a selection by the role's own tag
    assert (fit.host_dir("web1") / "family").exists()
    result, events, _ = _run(fit, "fit", skip_tags=("site", "fail-if-asked"), extra_vars=("fail=true",))
    ends = {e["step"]: e["status"] for e in events if e["event"] == "step_end"}
    assert result.outcome is Outcome.SUCCEEDED and ends["site"] == "skipped" and ends["fail-if-asked"] == "skipped"


def test_extra_vars_bind_parameters_stay_data_and_reach_the_undo(fit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    canary = tmp_path / "templated"
    evil = "{{ lookup('pipe', 'touch " + str(canary) + "') }}"
    result, events, record = _run(fit, "fit", extra_vars=("version=5", f"extra={evil}", "fail=true"))
    assert result.outcome is Outcome.ROLLED_BACK and result.exit_code == ExitCode.ROLLED_BACK
    assert (fit.host_dir("web1") / "version").read_text() == f"5 {evil}\n"
    assert (fit.host_dir("web1") / "undone").read_text() == f"{evil}\n"  # the undo saw the same -e
    assert not canary.exists()  # a value is data, never a template
    assert record["params"]["version"] == 5 and record["ansible"]["extra_vars"] == {"extra": evil, "fail": "true"}
    with pytest.raises(ParameterError) as exc:
        _run(fit, "fit", extra_vars=("version=five",))
    assert "'version' must be an integer" in exc.value.message
    with pytest.raises(ParameterError):
        _run(fit, "fit", params={"version": "2"}, extra_vars=("version=3",))


def test_diff_shows_what_changed_in_files(fit) -> None:  # type: ignore[no-untyped-def]
    (fit.host_dir("web1") / "version").write_text("0 -\n")
    result, events, _ = _run(fit, "fit", diff=True, tags=("write-version",), limit="web1")
    diffs = [e for e in events if e["event"] == "diff"]
    assert result.outcome is Outcome.SUCCEEDED and len(diffs) == 1
    assert diffs[0]["host"] == "web1" and "-0 -" in diffs[0]["diff"] and "+1 -" in diffs[0]["diff"]
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "events.schema.json").read_text())
    assert "diff" in schema["properties"]["event"]["enum"]
    assert all(k in diffs[0] for k in schema["x-required-by-event"]["diff"])


def test_show_reports_the_hosts_a_playbook_targets(fit) -> None:  # type: ignore[no-untyped-def]
    (fit.root / "playbooks" / "site.yml").write_text("- hosts: all\n  roles: [greet]\n")
    shown = show("fit", fit.project())
    assert shown.hosts["site"] == "all" and shown.hosts["write-version"] == "web"
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(fit.root), "show", "fit"],
                          capture_output=True, text=True, timeout=60)
    assert "site                     playbook  hosts=all " in proc.stdout


def test_run_cli_takes_ansible_playbook_options(fit) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(fit.root), "run", "fit",
                           "-e", "version=9", "-l", "web2", "-t", "write-version", "-D", "--output", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (fit.host_dir("web2") / "version").read_text() == "9 -\n" and not (fit.host_dir("web1") / "version").exists()
    assert any(json.loads(line)["event"] == "diff" for line in proc.stdout.splitlines())


def test_a_runme_notebook_runs_with_explicit_hosts(demo) -> None:  # type: ignore[no-untyped-def]
    notebook = demo.root / "envs.md"
    shutil.copy(FOREIGN / "runme" / "envs.md", notebook)
    result, events, record = _run(demo, str(notebook), hosts="web1")
    assert result.outcome is Outcome.SUCCEEDED, [e for e in events if e["event"] in ("host_result", "notice")]
    assert [(e["step"], e["host"]) for e in events if e["event"] == "host_result"] == [("vars", "web1"), ("vars2", "web1")]
    assert record["hosts_given"] == "web1"


def test_an_extra_variable_may_not_carry_a_secret(demo) -> None:  # type: ignore[no-untyped-def]
    demo.write_runbook("with-secret", "---\nhosts: web\nparams:\n  token: {type: secret, required: true}\n---\n"
                       "```sh {name=use undo=none}\ntest -n \"$TOKEN\"\n```\n")
    secret = "s3cr3t-canary-value-42"
    with pytest.raises(ParameterError) as exc:
        _run(demo, "with-secret", environ={"TECHNICIAN_OPS_PARAM_TOKEN": secret}, extra_vars=(f"dsn=pg://u:{secret}@db",))
    assert "holds a secret parameter's value" in exc.value.message and secret not in exc.value.message
    assert not list(demo.root.rglob("extra-vars.yml"))  # refused before any file was written
