"""``triggers:`` in front matter: lint at path:line, matching, and sandboxed rendering over labels only."""

from __future__ import annotations

from pathlib import Path

import pytest

from technician_ops.errors import ParameterError
from technician_ops.plan.loader import lint, load_runbook
from technician_ops.runbook.triggers import host, matches, render, template_problem

HEAD = """---
name: fs-cleanup
hosts: web
params:
  mountpoint: {type: string, required: true}
  keep: {type: int, default: 3}
  token: {type: secret}
"""
BODY = """---

```sh {name=clean undo=none}
echo "$MOUNTPOINT"
```
"""

GOOD = HEAD + """triggers:
  - alertmanager: {match: {alertname: NodeFilesystemSpaceFillingUp}, params: {mountpoint: "{{ labels.mountpoint }}"}, hosts: "{{ labels.instance | host }}"}
  - alertmanager:
      match: {alertname: DiskFull, severity: critical}
      params:
        mountpoint: "/srv/{{ labels['volume'] | lower }}"
        keep: "{{ labels.keep | default('5') }}"
""" + BODY


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "runbooks").mkdir(exist_ok=True)
    path = tmp_path / "runbooks" / "fs-cleanup.md"
    path.write_text(text)
    return path


def test_a_runbook_with_triggers_loads_them(tmp_path: Path) -> None:
    runbook = load_runbook(_write(tmp_path, GOOD), tmp_path)
    first, second = runbook.triggers
    assert (first.source, first.match, first.params, first.hosts, first.line) == (
        "alertmanager", {"alertname": "NodeFilesystemSpaceFillingUp"}, {"mountpoint": "{{ labels.mountpoint }}"},
        "{{ labels.instance | host }}", 9)
    assert first.labels == ("mountpoint", "instance")
    assert second.match == {"alertname": "DiskFull", "severity": "critical"} and second.hosts is None
    assert second.labels == ("volume", "keep") and second.line == 10
    assert lint(_write(tmp_path, GOOD), tmp_path) == []


BAD = [
    # (the triggers: block, the expected "line: message" fragments)
    ("triggers: {alertmanager: {}}\n", ["8: 'triggers' must be a list"]),
    ("triggers:\n  - pagerduty: {match: {a: b}}\n", ["9: trigger 1: unknown source 'pagerduty' (known: alertmanager)"]),
    ("triggers:\n  - just-a-string\n", ["9: trigger 1 must be a mapping with one key, its source"]),
    ("triggers:\n  - alertmanager: {match: {alertname: X}, extra: 1, params: {mountpoint: x}}\n",
     ["9: trigger 1: unknown key 'extra' (allowed: match, params, hosts)"]),
    ("triggers:\n  - alertmanager:\n      params: {mountpoint: x}\n", ["9: trigger 1: 'match' must be a non-empty mapping"]),
    ("triggers:\n  - alertmanager:\n      match: [alertname, X]\n      params: {mountpoint: x}\n",
     ["10: trigger 1: 'match' must be a non-empty mapping"]),
    ("triggers:\n  - alertmanager:\n      match:\n        alertname: X\n        severity: 2\n      params: {mountpoint: x}\n",
     ["12: trigger 1: match: label 'severity' must be matched by a string, got 2 (quote it)"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params:\n        mountpoint: x\n        nope: y\n",
     ["13: trigger 1: params: 'nope' is not a declared parameter (this runbook takes: keep, mountpoint, token)"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params:\n        mountpoint: x\n        token: '{{ labels.t }}'\n",
     ["13: trigger 1: params: 'token' is a secret parameter"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params:\n        mountpoint: '{{ labels.mp '\n",
     ["12: trigger 1: params.mountpoint: template syntax error"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params:\n        mountpoint: '{{ env.HOME }}'\n",
     ["12: trigger 1: params.mountpoint: 'env' is not available: a trigger template reads only labels.NAME"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params: {mountpoint: x}\n      hosts: '{{ labels }}'\n",
     ["12: trigger 1: hosts: read one label at a time: labels.NAME"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params: {mountpoint: x}\n"
     "      hosts: '{% for l in labels %}{{ l }}{% endfor %}'\n", ["12: trigger 1: hosts: statements"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params: {mountpoint: '{{ labels.m | attr(\"x\") }}'}\n",
     ["11: trigger 1: params.mountpoint: filter 'attr' is not available"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params: {mountpoint: '{{ labels.m.__class__ }}'}\n",
     ["11: trigger 1: params.mountpoint: a label's value is text"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      params: {mountpoint: '{{ labels.m() }}'}\n",
     ["11: trigger 1: params.mountpoint: call expressions are not available"]),
    ("triggers:\n  - alertmanager:\n      match: {alertname: X}\n      hosts: 3\n",
     ["11: trigger 1: 'hosts' must be a template string", "9: trigger 1: required parameter(s) mountpoint get no value"]),
]


@pytest.mark.parametrize("block,expected", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_triggers_are_reported_at_their_line(tmp_path: Path, block: str, expected: list[str]) -> None:
    diagnostics = [str(d).split(":", 1)[1] for d in lint(_write(tmp_path, HEAD + block + BODY), tmp_path)]
    assert len(diagnostics) == len(expected), diagnostics
    for fragment, got in zip(expected, diagnostics):
        assert got.startswith(fragment), (fragment, got)


def test_lint_cli_prints_trigger_errors_with_file_and_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _write(tmp_path, HEAD + "triggers:\n  - alertmanager: {match: {alertname: X}, params: {nope: x}}\n" + BODY)
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(tmp_path), "lint", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 65
    assert f"{path}:9: trigger 1: params: 'nope' is not a declared parameter" in proc.stdout


@pytest.mark.parametrize("instance,expected", [
    ("web1:9100", "web1"), ("web1", "web1"), ("10.0.0.5:9100", "10.0.0.5"), ("[2001:db8::1]:9100", "2001:db8::1"),
    ("[::1]", "::1"), ("2001:db8::1", "2001:db8::1"), ("web1:metrics", "web1:metrics"), (":9100", ":9100"),
])
def test_the_host_filter_strips_only_a_port(instance: str, expected: str) -> None:
    assert host(instance) == expected


def test_render_gives_params_and_one_host_from_the_labels_read_only(tmp_path: Path) -> None:
    first, second = load_runbook(_write(tmp_path, GOOD), tmp_path).triggers
    labels = {"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "/var", "instance": "web1:9100",
              "job": "node", "secret_looking": "hunter2"}
    assert matches(first, labels) and not matches(second, labels)
    got = render(first, labels)
    assert got.params == {"mountpoint": "/var"} and got.limit == "web1"
    # the labels that decided the run: those matched and those read, never the rest of the alert
    assert got.labels == {"alertname": "NodeFilesystemSpaceFillingUp", "instance": "web1:9100", "mountpoint": "/var"}
    got = render(second, {"alertname": "DiskFull", "severity": "critical", "volume": "DATA"})
    assert got.params == {"mountpoint": "/srv/data", "keep": "5"} and got.limit is None


@pytest.mark.parametrize("labels,message", [
    ({"alertname": "NodeFilesystemSpaceFillingUp", "instance": "web1:9100"},
     "the alert has no label 'mountpoint', which the trigger's params.mountpoint reads"),
    ({"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "/", "instance": "web1,web2"},
     "the trigger's hosts rendered 'web1,web2', which is not one inventory host name"),
    ({"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "/", "instance": "web*"},
     "which is not one inventory host name"),
    ({"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "/", "instance": "-e@evil:1"},
     "which is not one inventory host name"),
    ({"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "a\0b", "instance": "web1"}, "holding a NUL"),
    ({"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "x" * 5000, "instance": "web1"}, "longer than 4096"),
])
def test_render_refuses_what_cannot_be_a_run_input(tmp_path: Path, labels: dict[str, str], message: str) -> None:
    first = load_runbook(_write(tmp_path, GOOD), tmp_path).triggers[0]
    with pytest.raises(ParameterError) as exc:
        render(first, labels)
    assert message in exc.value.message


def test_a_label_value_is_data_never_a_template(tmp_path: Path) -> None:
    first = load_runbook(_write(tmp_path, GOOD), tmp_path).triggers[0]
    hostile = "{{ lipsum.__globals__['os'].popen('id').read() }}{% raw %}"
    got = render(first, {"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": hostile, "instance": "web1"})
    assert got.params["mountpoint"] == hostile


def test_template_problem_lists_the_labels_read() -> None:
    assert template_problem("{{ labels.a }}-{{ labels['b'] ~ labels.a | upper }}") == (None, ["a", "b"])
    assert template_problem("plain") == (None, [])
    assert "'lipsum' is not available" in str(template_problem("{{ lipsum }}")[0])
    assert "call expressions are not available" in str(template_problem("{{ range(3) }}")[0])


def test_a_filter_called_wrong_is_refused_as_the_alerts_problem_not_a_crash(tmp_path: Path) -> None:
    text = GOOD.replace('"{{ labels.mountpoint }}"', '"{{ labels.mountpoint | replace(\'a\') }}"', 1)
    assert text != GOOD
    first = load_runbook(_write(tmp_path, text), tmp_path).triggers[0]
    with pytest.raises(ParameterError) as exc:
        render(first, {"alertname": "NodeFilesystemSpaceFillingUp", "mountpoint": "/var", "instance": "web1"})
    assert "could not be rendered: TypeError" in exc.value.message
