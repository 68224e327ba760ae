from __future__ import annotations

from pathlib import Path

import yaml

from technician_ops.api import bind_plan, write_plan
from technician_ops.loader import load_runbook

RUNBOOK = """---
hosts: web
params:
  version: {type: string, default: "1.0"}
  token: {type: secret}
  n: {type: int, default: 2}
---

```yaml {name=write serial=1 timeout=2m when="n > 1"}
- ansible.builtin.copy: {dest: /tmp/x, content: "{{ version }}"}
```

```yaml {rollback=write}
- ansible.builtin.file: {path: /tmp/x, state: absent}
```

```bash {name=script hosts=db retries=2}
echo "{{ version }} $VERSION" > /tmp/y && curl -H "X: $TOKEN" localhost
```

```bash {rollback=script}
rm -f /tmp/y
```

```text {name=gate kind=approve}
Go?
```

```yaml {name=use-secret kind=check}
- ansible.builtin.command: echo {{ token }}
```
"""


def compile_demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    from technician_ops.project import load_project

    (tmp_path / "runbooks").mkdir()
    rb_path = tmp_path / "runbooks" / "c.md"
    rb_path.write_text(RUNBOOK)
    project = load_project(tmp_path, environ={})
    runbook = load_runbook(rb_path, tmp_path)
    plan = bind_plan(runbook, project, {"version": "2.0", "token": "s3cr3t-value"}, environ={})
    files = write_plan(plan, tmp_path / "out", project.state_dir)
    return plan, files


def test_one_play_per_step_in_document_order(tmp_path: Path) -> None:
    plan, files = compile_demo(tmp_path)
    plays = yaml.safe_load(files["playbook"].read_text().replace("!unsafe", ""))
    assert [p["name"] for p in plays] == ["write", "script", "gate", "use-secret"]
    write = plays[0]
    assert write["hosts"] == "web" and write["serial"] == 1 and write["any_errors_fatal"] is True
    assert write["gather_facts"] is False and write["vars_files"] == ["params.yml"]
    block = write["tasks"][0]
    assert block["when"] == "n > 1" and block["timeout"] == 120
    assert plays[2]["hosts"] == "localhost"
    assert plays[2]["tasks"][0]["block"][0]["technician_ops_approve"] == {"step": "gate"}


def test_shell_script_is_never_templated_and_gets_params_as_env(tmp_path: Path) -> None:
    _plan, files = compile_demo(tmp_path)
    text = files["playbook"].read_text()
    assert "cmd: !unsafe" in text  # Ansible will not render {{ version }} inside the script
    script = yaml.safe_load(text.replace("!unsafe", ""))[1]["tasks"][0]["block"][0]
    env = script["environment"]
    assert env["VERSION"] == "{{ version }}"
    assert "TOKEN" not in env  # a secret never becomes a VAR=value command-line prefix
    assert script["ansible.builtin.shell"]["stdin"] == "TOKEN={{ token | string | b64encode }}"
    assert script["ansible.builtin.shell"]["cmd"].startswith("while IFS= read -r __tops_kv")
    assert script["no_log"] is True  # it uses a secret
    assert script["retries"] == 2 and script["until"].endswith("is succeeded")


def test_secrets_are_looked_up_at_run_time_never_written(tmp_path: Path) -> None:
    _plan, files = compile_demo(tmp_path)
    for path in files.values():
        assert "s3cr3t-value" not in path.read_text()
    plays = yaml.safe_load(files["playbook"].read_text().replace("!unsafe", ""))
    check = plays[3]
    assert check["vars"]["token"] == "{{ lookup('technician_ops_secret', 'token') }}"
    task = check["tasks"][0]["block"][0]
    assert task["no_log"] is True and task["check_mode"] is False and task["changed_when"] is False
    assert check["vars"]["ansible_pipelining"] is True  # module args with secrets stay off disk
    assert "token" not in plays[0].get("vars", {})  # only steps that use it get it


def test_params_file_marks_values_unsafe(tmp_path: Path) -> None:
    _plan, files = compile_demo(tmp_path)
    text = files["params"].read_text()
    assert "version: !unsafe '2.0'" in text and "n: 2" in text and "token" not in text


def test_rollback_playbook_is_reverse_order_on_exact_hosts(tmp_path: Path) -> None:
    plan, _files = compile_demo(tmp_path)
    steps = {ps.name: ps for ps in plan.steps}
    plays = plan.rollback_playbook([(steps["write"], ["web1", "web2"]), (steps["script"], ["db1"])])
    assert [p["name"] for p in plays] == ["undo:script", "undo:write"]
    assert plays[0]["hosts"] == "db1" and plays[1]["hosts"] == "web1,web2"
    for play in plays:
        assert "any_errors_fatal" not in play and play["ignore_unreachable"] is True
        assert play["tasks"][0]["rescue"]  # one failed undo does not stop the others


def test_ansible_cfg_is_explicit(tmp_path: Path) -> None:
    _plan, files = compile_demo(tmp_path)
    cfg = files["config"].read_text()
    for line in ("gathering = explicit", "retry_files_enabled = False", "host_key_checking = True", "pipelining = True"):
        assert line in cfg
    assert "localhost" not in files["inventory"].read_text()  # implicit localhost: never matches "all"


def test_accelerated_runs_detect_dead_hosts_as_fast_as_ssh() -> None:
    from technician_ops.compiler import controller_inventory

    plain = yaml.safe_load(controller_inventory(["web1"]))
    assert "vars" not in plain["all"] and plain["all"]["hosts"]["web1"]["ansible_python_interpreter"]
    fast = yaml.safe_load(controller_inventory([], accelerate=True))
    assert fast["all"]["vars"] == {"mitogen_ssh_keepalive_interval": 5, "mitogen_ssh_keepalive_count": 3}
