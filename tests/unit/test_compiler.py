from __future__ import annotations

import os
from pathlib import Path

import yaml

from technician_ops.plan.compiler import bind_plan
from technician_ops.plan.files import write_plan
from technician_ops.plan.loader import load_runbook

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


def test_params_file_keeps_values_as_typed_and_never_templated(tmp_path: Path) -> None:
    _plan, files = compile_demo(tmp_path)
    text = files["params"].read_text()
    # A quoted YAML string: ansible-core 2.19 would load "!unsafe '2.0'" as the float 2.0.
    assert "version: '2.0'" in text and "n: 2" in text and "token" not in text
    from technician_ops.plan.files import params_file

    plan = _plan.__class__(**{**_plan.__dict__, "params": {**_plan.params, "version": "{{ lookup('pipe', 'id') }}"}})
    assert "version: !unsafe '{{ lookup(''pipe'', ''id'') }}'" in params_file(plan)  # text with { is never a template


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
    for line in ("gathering = implicit", "retry_files_enabled = False", "host_key_checking = True", "pipelining = True"):
        assert line in cfg
    assert "localhost" not in files["inventory"].read_text()  # implicit localhost: never matches "all"


def test_accelerated_runs_detect_dead_hosts_as_fast_as_ssh() -> None:
    from technician_ops.plan.files import controller_inventory

    plain = yaml.safe_load(controller_inventory(["web1"]))
    assert "vars" not in plain["all"] and plain["all"]["hosts"]["web1"]["ansible_python_interpreter"]
    fast = yaml.safe_load(controller_inventory([], accelerate=True))
    assert fast["all"]["vars"] == {"mitogen_ssh_keepalive_interval": 5, "mitogen_ssh_keepalive_count": 3}


def _step(body: str, **attrs: str):  # type: ignore[no-untyped-def]
    from technician_ops.runbook.model import Step

    return Step(name="s", kind="ansible", lang="yaml", body=body, line=1, body_line=2, attrs={"name": "s", **attrs})


def test_a_step_gathers_facts_only_when_it_reads_them() -> None:
    from technician_ops.steps.base import uses_facts

    reads = ["- debug: {msg: \"{{ ansible_facts['hostname'] }}\"}",
             "- debug: {msg: \"{{ ansible_hostname }}\"}",
             "- debug: {msg: \"{{ ansible_python.version.major }}\"}",  # a fact, unlike ansible_python_interpreter
             "- debug: {msg: \"{{ hostvars[item].ansible_default_ipv4.address }}\"}",
             "- debug: {msg: \"{{ ansible_local.app.version }}\"}"]  # facts.d
    for body in reads:
        assert uses_facts(_step(body)), body
    does_not = ["- command: /bin/true",
                "- debug: {msg: \"{{ ansible_host }} {{ ansible_port }} {{ ansible_user }}\"}",
                "- debug: {msg: \"{{ ansible_python_interpreter }} {{ ansible_become_user }} {{ ansible_ssh_common_args }}\"}",
                "- debug: {msg: \"{{ ansible_check_mode }} {{ ansible_play_hosts }} {{ ansible_version.full }}\"}",
                "- ansible.builtin.command: my_ansible_hostname_tool"]  # not a variable of its own
    for body in does_not:
        assert not uses_facts(_step(body)), body
    assert uses_facts(_step("- command: /bin/true", when="ansible_os_family == 'Debian'"))
    assert not uses_facts(_step("- debug: {msg: \"{{ ansible_hostname }}\"}", facts="false"))
    assert uses_facts(_step("- command: /bin/true", facts="true"))


def test_facts_are_gathered_for_those_plays_only_and_cached_under_the_state_dir(tmp_path: Path) -> None:
    from technician_ops.project import load_project

    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "f.md").write_text(
        "---\nhosts: web\n---\n\n```yaml {name=plain kind=check}\n- ansible.builtin.command: /bin/true\n```\n\n"
        "```yaml {name=by-os kind=check}\n- ansible.builtin.debug: {msg: \"{{ ansible_distribution }}\"}\n```\n")
    project = load_project(tmp_path, environ={})
    plan = bind_plan(load_runbook(tmp_path / "runbooks" / "f.md", tmp_path), project, {}, environ={})
    files = write_plan(plan, tmp_path / "out", project.state_dir)
    plays = yaml.safe_load(files["playbook"].read_text().replace("!unsafe", ""))
    assert [p["gather_facts"] for p in plays] == [False, True]
    cfg = files["config"].read_text()
    assert "gathering = smart" in cfg and "gathering = explicit" not in cfg
    assert "fact_caching = jsonfile" in cfg
    assert f"fact_caching_connection = {project.state_dir / 'facts'}" in cfg
    assert (project.state_dir / "facts").stat().st_mode & 0o777 == 0o700


def test_forks_one_per_cpu_for_local_hosts_one_per_target_for_ssh_or_mitogen() -> None:
    from technician_ops.plan.compiler import default_forks

    assert default_forks(50, remote=False, cpus=2) == 2
    assert default_forks(1, remote=False, cpus=8) == 8
    assert default_forks(30, remote=True, cpus=2) == 30
    assert default_forks(200, remote=True, cpus=2) == 50
    assert default_forks(1, remote=True, cpus=4) == 4  # never fewer than the CPUs


def test_run_sizes_forks_from_its_targets_unless_the_project_sets_them(tmp_path: Path) -> None:
    from technician_ops.engine import session
    from technician_ops.project import load_project

    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "c.md").write_text(RUNBOOK)
    (tmp_path / "inventory").mkdir()
    hosts = {f"web{i}": {"ansible_connection": "local"} for i in range(3)}
    hosts.update({f"ssh{i}": {"ansible_host": "192.0.2.1"} for i in range(40)})
    (tmp_path / "inventory" / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"web": {"hosts": hosts}, "db": {"hosts": {"web0": {}}}}}}))
    project = load_project(tmp_path, environ={})
    plan = bind_plan(load_runbook(tmp_path / "runbooks" / "c.md", tmp_path), project, {"token": "x"}, environ={})
    inventory = session.load_inventory(project)
    targets = session.target_hosts(plan, inventory)
    local = ["web0", "web1", "web2"]
    assert len(targets) == 43 and set(local) <= set(targets)
    cpus = os.cpu_count() or 2
    assert session.sized(plan, project, inventory, targets).forks == max(cpus, 43)  # SSH targets
    assert session.sized(plan, project, inventory, local).forks == cpus  # local only
    assert session.sized(plan, project, inventory, local, accelerated=True).forks == max(cpus, 3)
    (tmp_path / "technician-ops.toml").write_text("forks = 7\n")
    fixed = load_project(tmp_path, environ={})
    assert session.sized(bind_plan(plan.runbook, fixed, {"token": "x"}, environ={}), fixed, inventory, targets).forks == 7
