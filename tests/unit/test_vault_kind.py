"""The ``vault`` kind's body validation and compiled tasks (no services needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from technician_ops.steps import registry
from technician_ops.steps.base import BodyError, CompileContext
from technician_ops.steps.vault.kind import parse_spec
from technician_ops.runbook.model import Runbook, Step

GOOD = """\
secret: vault:secret/app/db#password
generate: {length: 24, charset: hex}
as: new_password
apply:
  - ansible.builtin.command: {argv: [true], stdin: "{{ new_password }}"}
verify:
  - ansible.builtin.command: {argv: [true], stdin: "{{ new_password }}"}
    changed_when: false
"""


@pytest.mark.parametrize(
    ("body", "message", "offset"),
    [
        ("- a\n- b\n", "must be a YAML mapping", 0),
        (GOOD + "extra: 1\n", "unknown key 'extra'", 8),
        (GOOD.replace("secret: vault:secret/app/db#password\n", ""), "needs 'secret'", 0),
        (GOOD.replace("#password", ""), "secret: Vault reference", 0),
        (GOOD.replace("generate: {length: 24, charset: hex}\n", ""), "exactly one of 'generate'", 0),
        (GOOD + "command: [pwgen]\n", "exactly one of 'generate'", 1),
        (GOOD.replace("length: 24", "length: 0"), "generate.length", 1),
        (GOOD.replace("charset: hex", "charset: emoji"), "generate.charset 'emoji' is unknown", 1),
        (GOOD.replace("charset: hex", "size: 3"), "unknown key 'size' in 'generate'", 1),
        (GOOD.replace("generate: {length: 24, charset: hex}", "command: 'pwgen 32'"), "'command' must be a non-empty list", 1),
        (GOOD.replace("as: new_password", "as: ansible_host"), "would shadow", 2),
        (GOOD.replace("as: new_password", "as: new-password"), "'as' must be a variable name", 2),
        (GOOD.replace("apply:\n  - ansible.builtin.command: {argv: [true], stdin: \"{{ new_password }}\"}\n", "apply: []\n"),
         "'apply' must be a non-empty list", 3),
        (GOOD.replace("    changed_when: false\n", "    no_log: false\n"), "sets no_log: false", 6),
        (GOOD.replace("  - ansible.builtin.command: {argv: [true], stdin: \"{{ new_password }}\"}\n    changed_when",
                      "  - name: nothing\n    changed_when"), "verify task 1 names no module", 6),
    ],
)
def test_bad_bodies_are_refused_at_their_line(body: str, message: str, offset: int) -> None:
    with pytest.raises(BodyError) as err:
        parse_spec(body)
    assert message in err.value.message
    assert err.value.offset == offset


def test_default_variable_name() -> None:
    assert parse_spec(GOOD.replace("as: new_password\n", ""))["as"] == "vault_value"


def _compile(check: bool = False, phase: str = "run") -> list[dict[str, Any]]:
    kind = registry()["vault"]
    step = Step("rotate", "vault", "yaml", {"kind": "vault"}, GOOD, 10, 11, spec=parse_spec(GOOD))
    rb = Runbook("rb", Path("rb.md"), "", "", "db", {}, (), "rb", None, None, (step,), {})
    ctx = CompileContext(rb, Path("."), {}, set(), check=check, phase=phase, hosts="db")
    return kind.undo_tasks(step, ctx) if phase == "rollback" else kind.tasks(step, ctx)


def _leaves(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in tasks:
        out.extend(_leaves(t["block"]) if "block" in t else [t])
    return out


def test_rotation_runs_once_and_every_task_that_sees_the_value_is_no_log() -> None:
    rotate, apply, verify = _compile()
    assert rotate["run_once"] is True and rotate["register"] == "technician_ops_vault_rotate"
    assert "no_log" not in rotate  # its failures must stay readable; the plugin censors a result with a value
    for block in (apply, verify):
        assert block["vars"]["new_password"] == "{{ technician_ops_vault_rotate.value }}"
        assert block["vars"]["ansible_pipelining"] is True
        assert block["no_log"] is True
        assert all(t["no_log"] is True for t in _leaves(block["block"]))


def test_undo_restores_then_reapplies_only_when_there_is_a_value() -> None:
    restore, reapply = _compile(phase="rollback")
    assert restore["technician_ops_vault_rollback"] == {"step": "rotate"}
    assert reapply["when"] == "technician_ops_vault_rotate_undo.reapply | default(false)"
    assert all(t["no_log"] is True for t in _leaves(reapply["block"]))


def test_check_mode_compiles_only_the_dry_run() -> None:
    only, = _compile(check=True)
    assert only["technician_ops_vault_rotate"]["dry_run"] is True
