"""ansible-playbook's ways, kept: the team's ansible.cfg, -e/--limit/--tags/--diff, playbook hosts."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import pytest

from technician_ops.errors import ConfigError, ParameterError
from technician_ops.engine.executor import unified_diff
from technician_ops.plan import ansible_config
from technician_ops.plan.compiler import build_plan
from technician_ops.plan.files import write_plan
from technician_ops.plan.loader import load_runbook
from technician_ops.plan.options import AnsibleOptions, cmdline, parse_extra_vars, split_tags
from technician_ops.runbook.model import Param


def _cfg(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(text)
    return parser


# -- the team's ansible.cfg -------------------------------------------------------------


def test_team_config_is_the_base_and_ours_layers_on_top(tmp_path: Path) -> None:
    team = tmp_path / "ansible.cfg"
    team.write_text("[defaults]\nroles_path = team_roles:/opt/roles\ncollections_path = ./collections\n"
                    "host_key_checking = False\ntimeout = 42 ; seconds\ncallbacks_enabled = ansible.posix.profile_tasks\n"
                    "[ssh_connection]\nssh_args = -o ProxyJump=bastion\n[privilege_escalation]\nbecome_method = sudo\n")
    text, notices = ansible_config.merge({"defaults": {"roles_path": "/p/roles", "host_key_checking": "True", "timeout": "10"},
                                          "ssh_connection": {"ssh_args": "-o ServerAliveInterval=5"}},
                                         ansible_config.read(team))
    cfg = _cfg(text)
    assert cfg["defaults"]["roles_path"] == f"/p/roles:{tmp_path}/team_roles:/opt/roles"  # ours first, relative made absolute
    assert cfg["defaults"]["collections_path"] == f"{tmp_path}/collections"
    assert cfg["defaults"]["host_key_checking"] == "True"  # required: ours
    assert cfg["defaults"]["timeout"] == "42"  # the team's choice stands
    assert cfg["defaults"]["callbacks_enabled"] == "ansible.posix.profile_tasks"
    assert cfg["ssh_connection"]["ssh_args"] == "-o ProxyJump=bastion -o ServerAliveInterval=5"  # theirs first: ssh keeps the first
    assert cfg["privilege_escalation"]["become_method"] == "sudo"
    assert len(notices) == 1 and "host_key_checking = False is replaced by True" in notices[0] and str(team) in notices[0]


def test_broken_team_config_names_file_and_line(tmp_path: Path) -> None:
    team = tmp_path / "ansible.cfg"
    team.write_text("[defaults]\nforks = 5\nthis line is not ini\n")
    with pytest.raises(ConfigError) as exc:
        ansible_config.read(team)
    assert f"{team}:3" in exc.value.message


def test_config_search_order_is_ansibles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    project = tmp_path / "proj"
    project.mkdir()
    found = ansible_config.find(project, {})
    assert found is None or found == Path("/etc/ansible/ansible.cfg")
    (tmp_path / "home" / ".ansible.cfg").write_text("[defaults]\n")
    assert ansible_config.find(project, {}) == tmp_path / "home" / ".ansible.cfg"
    (project / "ansible.cfg").write_text("[defaults]\n")
    assert ansible_config.find(project, {}) == project / "ansible.cfg"
    other = tmp_path / "elsewhere.cfg"
    other.write_text("[defaults]\n")
    assert ansible_config.find(project, {"ANSIBLE_CONFIG": str(other)}) == other


def _plan(tmp_path: Path, text: str, **kw):  # type: ignore[no-untyped-def]
    (tmp_path / "runbooks").mkdir(exist_ok=True)
    path = tmp_path / "runbooks" / "fit.md"
    path.write_text(text)
    runbook = load_runbook(path, tmp_path)
    return build_plan(runbook, tmp_path, {k: p.default for k, p in runbook.params.items()}, **kw)


RUNBOOK = """---
hosts: web
---
```yaml {name=gate kind=approve}
prompt: go?
```

```yaml {name=probe kind=check}
- ansible.builtin.ping:
```

```yaml {name=change undo=none}
- ansible.builtin.copy: {dest: /tmp/x, content: "x"}
```

```yaml {name=site kind=playbook}
file: playbooks/site.yml
tags: [deploy]
```
"""


def _project_with_playbook(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "site.yml").write_text("- import_playbook: db.yml\n- hosts: [web1, web2]\n  tasks: []\n")
    (tmp_path / "playbooks" / "db.yml").write_text("- hosts: all:!web\n  gather_facts: true\n  tasks: []\n")


def test_generated_config_gathers_as_ansible_does_and_records_the_base(tmp_path: Path) -> None:
    _project_with_playbook(tmp_path)
    (tmp_path / "ansible.cfg").write_text("[defaults]\ngathering = smart\n")
    plan = _plan(tmp_path, RUNBOOK)
    files = write_plan(plan, tmp_path / "out", tmp_path / "state", base_config=ansible_config.read(tmp_path / "ansible.cfg"))
    cfg = files["config"].read_text()
    assert f"on top of {tmp_path / 'ansible.cfg'}" in cfg and _cfg(cfg)["defaults"]["gathering"] == "smart"
    files = write_plan(plan, tmp_path / "out2", tmp_path / "state")
    assert _cfg(files["config"].read_text())["defaults"]["gathering"] == "implicit"


# -- tags ------------------------------------------------------------------------------


def test_tags_name_steps_gates_always_run_and_a_playbook_keeps_its_own(tmp_path: Path) -> None:
    _project_with_playbook(tmp_path)
    untagged = _plan(tmp_path, RUNBOOK).playbook()
    assert not any("tags" in p for p in untagged if "import_playbook" not in p)  # no filter asked: plays as before
    import dataclasses

    plan = dataclasses.replace(_plan(tmp_path, RUNBOOK), options=AnsibleOptions(tags=("change",)))
    by_name = {p.get("name"): p for p in plan.playbook() if "import_playbook" not in p}
    assert by_name["gate"]["tags"] == ["gate", "always"] and by_name["probe"]["tags"] == ["probe", "always"]
    assert by_name["change"]["tags"] == ["change"]
    imported = next(p for p in plan.playbook() if "import_playbook" in p)
    assert imported["tags"] == ["deploy"]  # the body's own; not the step's name, so facts still gather
    plan = dataclasses.replace(plan, options=AnsibleOptions(skip_tags=("site",)))
    imported = next(p for p in plan.playbook() if "import_playbook" in p)
    assert imported["tags"] == ["site", "deploy"]  # named by --skip-tags: tagged, so it is skipped


def test_playbook_step_targets_what_its_plays_name(tmp_path: Path) -> None:
    _project_with_playbook(tmp_path)
    plan = _plan(tmp_path, RUNBOOK)
    site = next(ps for ps in plan.steps if ps.name == "site")
    assert plan.host_patterns(site) == ["all:!web", "web1,web2"]
    (tmp_path / "playbooks" / "db.yml").write_text("- hosts: \"{{ target }}\"\n  tasks: []\n")
    assert plan.host_patterns(site) is None  # templated: only the run can tell
    gate = next(ps for ps in plan.steps if ps.name == "gate")
    assert plan.host_patterns(gate) == []


def test_playbook_step_tags_must_be_tags(tmp_path: Path) -> None:
    _project_with_playbook(tmp_path)
    from technician_ops.errors import RunbookError

    with pytest.raises(RunbookError) as exc:
        _plan(tmp_path, RUNBOOK.replace("tags: [deploy]", "tags: {a: 1}"))
    assert "'tags' must be a tag or a list of tags" in str(exc.value)


# -- -e and the other options ------------------------------------------------------------


PARAMS = {"count": Param("count", "int", 1), "who": Param("who", "string", 2)}


def test_extra_vars_forms_and_types(tmp_path: Path) -> None:
    (tmp_path / "vars.yml").write_text("region: eu\nreplicas: [1, 2]\n")
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        extra, assigned = parse_extra_vars(["a=1 b='two words'", '{"n": 3, "flag": true}', "@vars.yml", "count=7",
                                            "who=x", "a=last"], PARAMS)
    finally:
        os.chdir(old)
    assert extra == {"a": "last", "b": "two words", "n": 3, "flag": True, "region": "eu", "replicas": [1, 2]}
    assert assigned == {"count": "7", "who": "x"}  # typed later by the parameter's own rules


@pytest.mark.parametrize("item, message", [
    ("technician_ops_check=false", "technician-ops' own"),
    ("TECHNICIAN_OPS_X=1", "technician-ops' own"),
    ("hosts=all", "reserves"),
    ("hostvars=x", "reserves"),
    ("1x=2", "not a variable name"),
    ("novalue", "write KEY=VALUE"),
    ("[1, 2]", "write KEY=VALUE"),
    ('{"count": [1]}', "give it one value"),
    ("{a: [", "not valid YAML/JSON"),
    ("@/nonexistent/vars.yml", "cannot read"),
])
def test_extra_vars_refused(item: str, message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        parse_extra_vars([item], PARAMS)
    assert message in exc.value.message


def test_extra_vars_file_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("a: 1\nb: [\n")
    with pytest.raises(ParameterError) as exc:
        parse_extra_vars([f"@{bad}"], {})
    assert f"{bad}:" in exc.value.message


def test_options_become_ansible_playbook_arguments(tmp_path: Path) -> None:
    options = AnsibleOptions("web", split_tags(["a,b", "c", "a"]), ("d",), True, {"x": 1})
    assert options.tags == ("a", "b", "c")
    run = cmdline(options, tmp_path, phase="run")
    assert run == ["--limit", f"@{tmp_path}/limit.txt", "--tags", "a,b,c", "--skip-tags", "d", "--diff",
                   "--extra-vars", f"@{tmp_path}/extra-vars.yml"]
    # An undo runs on the hosts its step changed, whatever was selected: no limit, no tags.
    assert cmdline(options, tmp_path, phase="rollback") == ["--diff", "--extra-vars", f"@{tmp_path}/extra-vars.yml"]
    assert not AnsibleOptions() and AnsibleOptions.from_record(options.record()) == options


def test_extra_vars_file_is_never_templated(tmp_path: Path) -> None:
    import dataclasses

    _project_with_playbook(tmp_path)
    plan = dataclasses.replace(_plan(tmp_path, RUNBOOK), options=AnsibleOptions(extra_vars={
        "evil": "{{ lookup('pipe', 'id') }}", "nested": {"list": ["{% raw %}x"]}}))
    write_plan(plan, tmp_path / "out", tmp_path / "state")
    text = (tmp_path / "out" / "extra-vars.yml").read_text()
    assert "evil: !unsafe" in text and "- !unsafe" in text
    assert oct((tmp_path / "out" / "extra-vars.yml").stat().st_mode & 0o777) == "0o600"


def test_unified_diff_of_ansible_results() -> None:
    text = unified_diff([{"before": "a\nb\n", "after": "a\nc\n", "before_header": "/etc/x (content)", "after_header": "/etc/x (content)"},
                         {"prepared": "--- x\n+++ y\n"}, {"before": {"state": "absent"}, "after": {"state": "file"}}])
    assert "-b\n+c" in text and "--- /etc/x (content)" in text and "+++ y" in text and "'absent'" in text
    assert unified_diff({"before": "", "after": ""}) == ""
    assert len(unified_diff({"before": "", "after": "x\n" * 100_000})) < 70_000


def test_the_team_config_cannot_open_a_way_around_redaction_or_host_keys(tmp_path: Path) -> None:
    team = tmp_path / "ansible.cfg"
    team.write_text("[defaults]\nlog_path = /var/log/ansible.log\nkeep_remote_files = True\n"
                    "[ssh_connection]\nssh_args = -o ProxyJump=bastion -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\n")
    text, notices = ansible_config.merge({"defaults": {"keep_remote_files": "False"},
                                          "ssh_connection": {"ssh_args": "-o ServerAliveInterval=5"}},
                                         ansible_config.read(team))
    cfg = _cfg(text)
    assert "log_path" not in cfg["defaults"] and cfg["defaults"]["keep_remote_files"] == "False"
    assert cfg["ssh_connection"]["ssh_args"] == "-o ProxyJump=bastion -o ServerAliveInterval=5"
    said = "\n".join(notices)
    assert "log_path is left out" in said and "StrictHostKeyChecking=no" in said and "keep_remote_files" in said


@pytest.mark.parametrize("item, message", [
    ("ansible_become_password=x", "looks like a credential"),
    ("api_token=x", "looks like a credential"),
    ("db_passwd=x", "looks like a credential"),
    ("steps=x", "holds what earlier steps printed"),
    ("{m: {1: a}}", "every key of a mapping in it must be a string"),
])
def test_extra_vars_that_would_leak_or_break_are_refused(item: str, message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        parse_extra_vars([item], PARAMS)
    assert message in exc.value.message
    fine = parse_extra_vars(["passenger=1 bypass_cache=true ansible_ssh_private_key_file=/k tokens_used=2"], PARAMS)[0]
    assert set(fine) == {"passenger", "bypass_cache", "ansible_ssh_private_key_file", "tokens_used"}
