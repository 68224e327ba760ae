"""``vault``: rotate a secret in OpenBao/Vault KV v2, apply it, verify it.

Body (YAML)::

    secret: vault:secret/app/db#password
    generate: {length: 32, charset: alnum}     # or  command: [argv...]
    as: new_password                            # default: vault_value
    apply:  [ansible tasks using {{ new_password }}]
    verify: [ansible tasks using {{ new_password }}]

Compiles to one play on the step's hosts: our ``technician_ops_vault_rotate``
action plugin runs once on the controller and registers the new value; then
the apply and verify tasks run on every host with that value in a no_log
variable.  The undo (automatic, also when this step itself failed) restores
version N as a new version and re-runs apply and verify with the old value.
The value is never on a command line or in a file: the plugins pass it in
memory, and every task that sees it runs with ``no_log`` and pipelining (so
module arguments travel over stdin, not as files on the host).
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from typing import Any

import yaml

from technician_ops.runbook import yamlio
from technician_ops.runbook.model import Step
from technician_ops.state import StepState
from technician_ops.steps.base import TASK_KEYWORDS, BodyError, CompileContext, PastRun, StepKind, load_yaml_body

KEYS = ("secret", "generate", "command", "as", "apply", "verify")
GENERATE_KEYS = ("length", "charset")
DEFAULT_AS = "vault_value"
# Names the value may not take: they would shadow Ansible's or ours.
RESERVED_PREFIXES = ("ansible_", "technician_ops_", "hostvars", "inventory_", "group_names", "groups", "omit")


def result_var(step: Step) -> str:
    """The registered variable holding the plugin's result (and the value)."""
    return "technician_ops_vault_" + re.sub(r"[^A-Za-z0-9_]", "_", step.name)


def _key_lines(body: str) -> dict[str, int]:
    """0-based line of each top-level key and of each item of apply/verify."""
    try:
        node = yamlio.compose(body)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            lines[key] = key_node.start_mark.line
            if isinstance(value_node, yaml.SequenceNode):
                for i, item in enumerate(value_node.value):
                    lines[f"{key}[{i}]"] = item.start_mark.line
    return lines


def _tasks(value: Any, key: str, lines: dict[str, int]) -> list[dict[str, Any]]:
    offset = lines.get(key, 0)
    if not isinstance(value, list) or not value:
        raise BodyError(f"{key!r} must be a non-empty list of Ansible tasks", offset)
    for i, task in enumerate(value):
        at = lines.get(f"{key}[{i}]", offset)
        if not isinstance(task, dict):
            raise BodyError(f"{key} task {i + 1} is not a mapping: each item must be one Ansible task", at)
        if "hosts" in task or "tasks" in task:
            raise BodyError(f"{key} task {i + 1} looks like a play (has hosts/tasks): give tasks", at)
        if task.get("no_log") is False:
            raise BodyError(f"{key} task {i + 1} sets no_log: false; tasks that see the secret always run with no_log", at)
        modules = [k for k in task if k not in TASK_KEYWORDS and not k.startswith("with_")]
        if not modules and "block" not in task:
            raise BodyError(f"{key} task {i + 1} names no module", at)
    return [dict(t) for t in value]


def parse_spec(body: str) -> dict[str, Any]:
    """Validate a vault step body; the result is what :meth:`VaultKind.tasks` compiles."""
    from technician_ops.steps.vault import client as vault  # cheap: hvac is imported lazily there

    data = load_yaml_body(body)
    lines = _key_lines(body)
    if not isinstance(data, dict):
        raise BodyError("vault step body must be a YAML mapping with secret, generate or command, apply and verify")
    for key in data:
        if key not in KEYS:
            raise BodyError(f"unknown key {key!r} in vault step; known keys: {', '.join(KEYS)}", lines.get(str(key), 0))
    for key in ("secret", "apply", "verify"):
        if key not in data:
            raise BodyError(f"vault step needs {key!r}")
    secret = data["secret"]
    try:
        vault.parse_ref(secret)
    except vault.VaultRefError as exc:
        raise BodyError(f"secret: {exc.message}", lines.get("secret", 0)) from None

    if ("generate" in data) == ("command" in data):
        raise BodyError("vault step needs exactly one of 'generate' (length, charset) or 'command' (argv list)",
                        lines.get("generate", lines.get("command", 0)))
    spec: dict[str, Any] = {"secret": secret}
    if "generate" in data:
        gen = data["generate"] if data["generate"] is not None else {}
        at = lines.get("generate", 0)
        if not isinstance(gen, dict):
            raise BodyError("'generate' must be a mapping: {length: 32, charset: alnum}", at)
        unknown = [k for k in gen if k not in GENERATE_KEYS]
        if unknown:
            raise BodyError(f"unknown key {unknown[0]!r} in 'generate'; known keys: length, charset", at)
        length = gen.get("length", 32)
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= vault.MAX_LENGTH:
            raise BodyError(f"generate.length must be an integer from 1 to {vault.MAX_LENGTH}, not {length!r}", at)
        charset = gen.get("charset", "alnum")
        if charset not in vault.CHARSETS:
            raise BodyError(f"generate.charset {charset!r} is unknown; choose one of {', '.join(vault.CHARSETS)}", at)
        spec["generate"] = {"length": length, "charset": charset}
    else:
        argv = data["command"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise BodyError("'command' must be a non-empty list of strings (argv, no shell)", lines.get("command", 0))
        spec["command"] = list(argv)

    name = data.get("as", DEFAULT_AS)
    at = lines.get("as", 0)
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise BodyError(f"'as' must be a variable name, not {name!r}", at)
    if name.startswith(RESERVED_PREFIXES):
        raise BodyError(f"'as: {name}' would shadow an Ansible or technician-ops variable; pick another name", at)
    spec["as"] = name
    spec["apply"] = _tasks(data["apply"], "apply", lines)
    spec["verify"] = _tasks(data["verify"], "verify", lines)
    return spec


def _with_value(tasks: list[dict[str, Any]], name: str, source: str, label: str) -> dict[str, Any]:
    """A block that runs ``tasks`` with the value in variable ``name``, never logged.

    Pipelining keeps module arguments (which may hold the value) off the
    host's disk; it is on for SSH already and is forced here for every
    connection, the local one included.
    """
    return {
        "name": label,
        "vars": {name: "{{ %s.value }}" % source, "ansible_pipelining": True},
        "no_log": True,
        "block": [{**t, "no_log": True} for t in tasks],
    }


class VaultKind(StepKind):
    name = "vault"
    runs_on_nodes = False
    quiet = True
    auto_undo = True
    undo_on_own_failure = True  # a failed verify leaves the new value published
    secret_scheme = "vault"  # front matter ``secrets: {x: "vault:mount/path#key"}``

    def undo_hosts(self, step: Step, state: StepState, *, failed: bool) -> list[str]:
        """A finished rotation is undone on every host that applied it; a failed one on every host it reached."""
        return list(state.hosts) if failed else state.done_hosts

    # -- run-time hooks (hvac and the controller code load only here) ----------------
    def resolve_secrets(self, refs: dict[str, str], environ: dict[str, str] | None) -> dict[str, str]:
        """Read before anything runs; values live only in this process (the plan's params)."""
        from technician_ops.steps.vault.client import resolve_refs

        return dict(resolve_refs(refs, env=environ))

    def before_run(self, steps: list[Step], *, check: bool) -> None:
        """Every vault step's token capabilities, checked before any step runs.

        The step checks again when it rotates; checking here too means a token
        without permission fails the run (recorded ``refused``) with the path and
        the missing capability before an earlier step has changed a host.  Vault
        down, sealed, or no credentials: the step itself fails, recorded as it
        always was (down or sealed: the run exits 75 once it undid what changed).
        """
        from technician_ops.errors import TechnicianOpsError
        from technician_ops.steps.vault.client import VaultPermissionError
        from technician_ops.steps.vault.controller import check_access

        try:
            check_access([s.spec["secret"] for s in steps], check=check)
        except VaultPermissionError:
            raise  # a token without the capability: 78, before anything changed
        except TechnicianOpsError:
            return  # down, sealed: the step fails and says so; the run undoes what changed and exits 75

    def check_undo_of_past_run(self, past: PastRun, items: list[tuple[Any, list[str]]]) -> list[tuple[Any, list[str]]]:
        """``rollback``: the rotation must be recorded complete.  ``recover``: converge a killed rotation first."""
        from technician_ops.steps.vault import controller

        keep = []
        for ps, hosts in items:
            if past.action == "rollback":
                controller.check_past_rollback(ps.name, past.state_dir, past.run_id)
                keep.append((ps, hosts))
                continue
            decision = controller.converge(ps.name, past.state_dir, past.run_id)
            past.decisions.append(decision)
            if decision.undo:
                keep.append((ps, hosts))
        return keep

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        return parse_spec(body)

    def _generator_args(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"command": spec["command"]} if "command" in spec else {"generate": spec["generate"]}

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        spec = step.spec
        rotate: dict[str, Any] = {
            "name": f"rotate {spec['secret'][len('vault:'):]}",
            "technician_ops_vault_rotate": {"step": step.name, "secret": spec["secret"], **self._generator_args(spec)},
            "run_once": True,
            "register": result_var(step),
        }
        if ctx.check:
            # A dry run: the plugin checks access and versions and writes nothing;
            # apply and verify are not compiled (there is no new value to show them).
            rotate["technician_ops_vault_rotate"]["dry_run"] = True
            rotate["check_mode"] = False
            return [rotate]
        src = result_var(step)
        return [
            rotate,
            _with_value(spec["apply"], spec["as"], src, "apply the rotated value"),
            _with_value(spec["verify"], spec["as"], src, "verify the rotated value"),
        ]

    def undo_tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        spec = step.spec
        src = result_var(step) + "_undo"
        reapply = {
            "name": "re-apply the previous value",
            "when": f"{src}.reapply | default(false)",
            "block": [
                _with_value(spec["apply"], spec["as"], src, "apply the previous value"),
                _with_value(spec["verify"], spec["as"], src, "verify the previous value"),
            ],
        }
        return [
            {
                "name": f"restore the previous version of {spec['secret'][len('vault:'):]}",
                "technician_ops_vault_rollback": {"step": step.name},
                "run_once": True,
                "register": src,
            },
            reapply,
        ]


KIND = VaultKind()
