"""One parse per YAML text, with the data and errors of ``yaml.safe_load``."""

from __future__ import annotations

import pytest
import yaml

from technician_ops.runbook import yamlio

TEXTS = [
    "- ansible.builtin.command: /bin/true\n  changed_when: false\n",
    "a: 1\nb: [x, 'y', 2.5, null, true, 2020-01-02]\nc: {d: e}\n",
    "base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_load_equals_safe_load(text: str) -> None:
    assert yamlio.load(text) == yaml.safe_load(text)
    assert yamlio.load(text) == yaml.safe_load(text)  # from the cached tree, again


def test_each_load_is_a_fresh_object() -> None:
    first = yamlio.load(TEXTS[1])
    first["a"] = 99
    assert yamlio.load(TEXTS[1])["a"] == 1


@pytest.mark.parametrize("text", ["a: b: c\n", "- x\n y: [\n", "key: 'open\n", "a: !!python/name:os.system x\n"])
def test_errors_are_worded_and_placed_as_pure_python_pyyaml(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as expected:
        yaml.load(text, Loader=yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError) as got:
        yamlio.load(text)
    assert str(got.value) == str(expected.value)


def test_node_lines_match_pyyaml() -> None:
    text = "x: 1\n\nitems:\n  - a\n  - b: 2\n"
    fast, slow = yamlio.compose(text), yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(fast, yaml.MappingNode) and isinstance(slow, yaml.MappingNode)
    assert [(k.start_mark.line, v.start_mark.line) for k, v in fast.value] == \
           [(k.start_mark.line, v.start_mark.line) for k, v in slow.value]
