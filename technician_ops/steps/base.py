"""What a step kind is: how it reads its body, what it compiles to, its undo.

Kinds are a registry (``kinds/__init__.py`` discovers every module in this
package), so adding a kind is adding one module; the parser, validator,
compiler and runner never name a kind.  Kind modules must stay cheap to
import: ``lint`` loads them all, and ansible is never imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import yaml

from technician_ops.runbook import yamlio
from technician_ops.runbook.model import Runbook, Step
from technician_ops.runbook.params import parse_duration
from technician_ops.runbook.yamlio import Unsafe, dump as dump_yaml
from technician_ops.state import StepState

# Modules that only read: a task list made of these needs no undo.
READ_ONLY_MODULES = frozenset(
    m
    for name in (
        "assert", "debug", "fail", "meta", "pause", "ping", "set_fact", "set_stats", "setup",
        "slurp", "stat", "find", "getent", "wait_for", "wait_for_connection", "include_vars",
        "package_facts", "service_facts", "uri", "fetch", "async_status",
    )
    for m in (name, f"ansible.builtin.{name}")
)
# Keys of a task that are not its module.
TASK_KEYWORDS = frozenset(
    """name when register changed_when failed_when ignore_errors ignore_unreachable loop loop_control
    with_items with_dict with_list until retries delay tags vars environment become become_user
    become_method check_mode diff no_log notify delegate_to delegate_facts run_once throttle timeout
    args any_errors_fatal collections module_defaults debugger connection async poll action local_action
    listen""".split()
)


class BodyError(ValueError):
    """A problem in a step body; ``offset`` is the 0-based line within the body."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass
class CompileContext:
    """What a kind needs to compile one step of a bound plan."""

    runbook: Runbook
    project_root: Path
    params: dict[str, Any]
    secret_names: set[str]
    check: bool = False
    phase: str = "run"  # "run" or "rollback"
    hosts: Any = None  # resolved hosts for this play (pattern string or list of names)
    extra: dict[str, Any] = field(default_factory=dict)


class UndoDecision(Protocol):
    """What a kind decided, reading only, about undoing its step of an earlier run (``recover``)."""

    @property
    def undo(self) -> bool: ...  # the step's undo runs

    @property
    def changes_state(self) -> bool: ...  # ``apply`` writes what the undo will read

    def describe(self) -> str | None: ...

    def artifact(self) -> dict[str, Any]: ...

    def apply(self, new_run_id: str) -> None: ...


@dataclass
class PastRun:
    """An earlier run being undone (``rollback RUN_ID``/``recover RUN_ID``), as the kinds' hooks see it."""

    action: str  # "rollback" or "recover"
    record: dict[str, Any]  # its audit record
    state_dir: Path
    decisions: list[UndoDecision] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.record["run_id"])


class StepKind:
    """One kind of step.  The engine knows kinds only through these attributes and hooks."""

    name: ClassVar[str] = ""
    languages: ClassVar[tuple[str, ...]] = ()  # fence languages that default to this kind
    mutating: ClassVar[bool] = True  # False: read-only; runs under --check too; no undo needed
    controller: ClassVar[bool] = False  # runs on the controller, not on the step's hosts
    auto_undo: ClassVar[bool] = False  # the kind registers its own undo (backup, vault)
    undo_on_own_failure: ClassVar[bool] = False  # undo even when this very step failed
    extra_attrs: ClassVar[frozenset[str]] = frozenset()
    own_hosts: ClassVar[bool] = False  # the body picks its hosts (a playbook): the step's hosts= is not its target
    expects_undo: ClassVar[bool] = True  # lint warns when a step that changes things has none
    asks_operator: ClassVar[bool] = False  # the step needs an answer from the operator (approve)
    secret_scheme: ClassVar[str | None] = None  # front matter ``secrets: {x: "SCHEME:..."}`` this kind resolves
    gate: ClassVar[bool] = False  # guards the steps after it (approve, check): runs whatever --tags selects
    quiet: ClassVar[bool] = False  # its tasks' output is the tool's own plumbing (a backup's hashes): not shown
    # Whether its hosts may sit behind an execution node (docs/nodes.md): not when it keeps state on the
    # controller (a backup's files, a vault step's one rotation) or reads project files by path (a playbook).
    runs_on_nodes: ClassVar[bool] = True

    # -- parse/validate --------------------------------------------------
    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        """Return the parsed spec or raise BodyError."""
        return body

    def changes_things(self, step: Step) -> bool:
        """Whether this step can change state, so it should have an undo."""
        return self.mutating

    def has_auto_undo(self, step: Step) -> bool:
        """Whether this very step brings its own undo (a kind may decide per step)."""
        return self.auto_undo

    def undo_hosts(self, step: Step, state: StepState, *, failed: bool) -> list[str]:
        """The hosts where this step may have changed something, so its undo runs there (docs/undo.md).

        ``failed``: the step did not finish cleanly everywhere (it failed, or the run was stopped inside
        it).  By default: every host where a task reported a change or nobody can tell (no_log, stopped
        mid-task); a kind whose own failure leaves its change behind (``undo_on_own_failure``) undoes
        every host it reached.
        """
        if failed and self.undo_on_own_failure:
            return list(state.hosts)
        return state.changed_hosts

    def host_patterns(self, step: Step, project_root: Path) -> list[str] | None:
        """For an ``own_hosts`` kind: the host patterns its plays really target (None: cannot tell)."""
        return None

    def referenced_names(self, step: Step) -> str:
        """Text searched for secret-variable references (decides no_log)."""
        return step.body

    # -- compile -----------------------------------------------------------
    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def undo_tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        """Tasks of the automatic undo, for kinds with ``auto_undo``."""
        raise NotImplementedError

    def plays(self, step: Step, ctx: CompileContext, tasks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The plays of this step.  The default is one play on the step's hosts."""
        return [standard_play(self, step, ctx, self.tasks(step, ctx) if tasks is None else tasks)]

    # -- run-time hooks: called once per run for each kind the plan uses ---------
    # They may import heavy modules (their package's controller.py): lint never calls them.
    def resolve_secrets(self, refs: dict[str, str], environ: dict[str, str] | None) -> dict[str, str]:
        """Values of front matter secrets in this kind's ``secret_scheme``; before anything runs."""
        raise NotImplementedError

    def before_run(self, steps: list[Step], *, check: bool) -> None:
        """Refuse the run (raise a ``TechnicianOpsError``) before any step changes anything."""

    def after_run(self, runbook: Runbook, state_dir: Path, keep: int) -> list[str]:
        """After a run that needs no human (succeeded, failed, rolled back); returns warnings."""
        return []

    def check_undo_of_past_run(self, past: PastRun, items: list[tuple[Any, list[str]]]) -> list[tuple[Any, list[str]]]:
        """Of this kind's (plan step, hosts) about to be undone for ``past``, the ones whose undo runs.

        Raise ``PastRunError`` to refuse (nothing changed yet); add decisions to ``past.decisions``.
        """
        return items


def load_yaml_body(body: str) -> Any:
    try:
        return yamlio.load(body) if body.strip() else None
    except RecursionError:
        raise BodyError("the step body's YAML is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise BodyError(f"invalid YAML in step body: {problem}", mark.line if mark else 0) from None


def task_lines(body: str) -> list[int]:
    """0-based line of each top-level list item, for errors about one task."""
    try:
        node = yamlio.compose(body)
    except (yaml.YAMLError, RecursionError):
        return []
    if isinstance(node, yaml.SequenceNode):
        return [item.start_mark.line for item in node.value]
    return []


def parse_task_list(body: str) -> list[dict[str, Any]]:
    data = load_yaml_body(body)
    if not isinstance(data, list) or not data:
        raise BodyError("step body must be a YAML list of Ansible tasks (each item starting with '- ')")
    lines = task_lines(body)
    for i, task in enumerate(data):
        offset = lines[i] if i < len(lines) else 0
        if not isinstance(task, dict):
            raise BodyError(f"task {i + 1} is not a mapping: each list item must be one Ansible task", offset)
        if "hosts" in task or "tasks" in task:
            raise BodyError(f"task {i + 1} looks like a play (has hosts/tasks): a step body is a task list; use kind=playbook for whole plays", offset)
        modules = [k for k in task if k not in TASK_KEYWORDS and not k.startswith("with_")]
        if not modules and not any(k in task for k in ("block", "action", "local_action", "include_tasks", "import_tasks")):
            raise BodyError(f"task {i + 1} names no module", offset)
    return data


def task_changes_things(task: dict[str, Any]) -> bool:
    if task.get("changed_when") in (False, "false", "False"):
        return False
    if task.get("check_mode") is True:
        return False
    if "block" in task:
        return any(task_changes_things(t) for t in task.get("block") or [] if isinstance(t, dict))
    modules = [k for k in task if k not in TASK_KEYWORDS]
    return any(m not in READ_ONLY_MODULES for m in modules)


# -- the default play of one step ----------------------------------------------

def standard_play(kind: StepKind, step: Step, ctx: CompileContext, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    attrs = step.attrs
    hosts: Any = ctx.hosts
    if kind.controller:
        hosts = "localhost"
    elif isinstance(hosts, list):
        hosts = ",".join(hosts) if hosts else "!all"
    play: dict[str, Any] = {"name": step.name, "hosts": Unsafe(hosts) if isinstance(hosts, str) else hosts,
                            "gather_facts": uses_facts(step)}
    if attrs.get("continue_on_error", "false").lower() not in ("true", "yes"):
        if "max_fail_percentage" in attrs:
            play["max_fail_percentage"] = int(attrs["max_fail_percentage"])
        else:
            play["any_errors_fatal"] = True
    if "serial" in attrs and not kind.controller:
        serial = attrs["serial"]
        play["serial"] = int(serial) if serial.isdigit() else serial
    if attrs.get("become", "").lower() in ("true", "yes"):
        play["become"] = True
        if "become_user" in attrs:
            play["become_user"] = attrs["become_user"]
    play["vars_files"] = ["params.yml"]
    # Every process a task starts on a host carries the run and phase in its environment, so what a
    # stopped run left running there can be found and killed before its undo (``stop_play``).
    # The control channel is for our plugins, which run in Ansible's own processes: a task's processes
    # get it blanked, so no step can talk to technician-ops in the operator's name.
    play["environment"] = {RUN_MARKER: run_marker(ctx.extra.get("run_id", "compiled"), ctx.phase), **_HIDDEN}
    secret_vars = _secret_vars(step, ctx)
    if secret_vars:
        # Pipelining keeps module arguments (which may now hold a secret) off
        # the target's disk, for local connections too.
        play["vars"] = {**secret_vars, "ansible_pipelining": True}
    tasks = [_with_no_log(t, ctx.secret_names) for t in tasks]
    if "retries" in attrs:
        tasks = [_with_retries(t, int(attrs["retries"]), int(attrs.get("delay", "5"))) for t in tasks]
    block: dict[str, Any] = {"name": step.name, "block": tasks}
    if "when" in attrs:
        block["when"] = bare_condition(attrs["when"])
    if "timeout" in attrs:
        block["timeout"] = parse_duration(attrs["timeout"])
    if attrs.get("continue_on_error", "false").lower() in ("true", "yes"):
        block["ignore_errors"] = True
    play["tasks"] = [block]
    if ctx.phase == "run" and step.name in (ctx.extra.get("published") or ()):
        play["tasks"].append(publish_task(step.name, tasks))
    return play


PLUMBING = "technician-ops: "  # tasks of ours inside a step's play; the tracker does not count them


def publish_task(name: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Register the step's last task and publish it as the host's ``steps[name]`` (runbook/refs.py).

    ``no_log``: the result may hold a secret the step printed, and a set_fact's result would carry it
    into ansible-runner's events on disk.
    """
    import json

    last = tasks[-1]
    register = last.get("register") or "technician_ops_result"
    last.setdefault("register", register)
    value = "{{ steps | default({}) | combine({%s: (%s | default({'skipped': true}) | technician_ops_step_output)}) }}" % (
        json.dumps(name), register)
    # "always": a later step's when= reads it whatever --tags selected (a skipped step publishes "skipped").
    return {"name": f"{PLUMBING}publish {name}", "ansible.builtin.set_fact": {"steps": value}, "no_log": True,
            "tags": ["always"]}


def bare_condition(when: str) -> str:
    """``when=`` as Ansible wants a conditional: a bare expression (``{{ x }}`` around it is dropped)."""
    text = when.strip()
    if text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1:
        return text[2:-2].strip()
    return when


RUN_MARKER = "TECHNICIAN_OPS_RUN"
_HIDDEN = {"TECHNICIAN_OPS_CONTROL_SOCKET": "", "TECHNICIAN_OPS_CONTROL_TOKEN": ""}


def run_marker(run_id: str, phase: str) -> str:
    return f"{run_id}:{phase}"


# Kills every process on the host whose environment carries the marker (argument 1), but itself.  One
# grep reads every environment (NUL-separated: -z) in one pass: a host running thousands of processes is
# searched in milliseconds, not the seconds a process per candidate took, while the stopped task may go on.
# A grep without -z gets the slow loop.
_STOP_SCRIPT = r"""marker="$1"
if printf 'x\0' | grep -qxzF x 2>/dev/null; then
  found=$(grep -lxzF -e "$marker" /proc/[0-9]*/environ 2>/dev/null)
else
  found=$(for env in /proc/[0-9]*/environ; do
    tr '\0' '\n' < "$env" 2>/dev/null | grep -qxF "$marker" && echo "$env"
  done)
fi
for env in $found; do
  pid=${env#/proc/}; pid=${pid%/environ}
  [ "$pid" = "$$" ] && continue
  kill -KILL "$pid" 2>/dev/null
done
exit 0
"""


def stop_play(hosts: list[str], run_id: str) -> dict[str, Any]:
    """A play that kills what a stopped run's tasks left running on ``hosts`` (an SSH host's sshd does not
    signal a command whose connection went away), run before their undo."""
    return {"name": "stop:leftovers", "hosts": ",".join(hosts), "gather_facts": False, "ignore_unreachable": True,
            "tasks": [{"name": "stop what the stopped run left running", "timeout": 60,
                       "ansible.builtin.command": {"argv": ["/bin/sh", "-c", Unsafe(_STOP_SCRIPT), "stop",
                                                            f"{RUN_MARKER}={run_marker(run_id, 'run')}"]},
                       "changed_when": False, "ignore_errors": True}]}


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def _secret_vars(step: Step, ctx: CompileContext) -> dict[str, str]:
    """Secrets are fetched at run time through our lookup: never in a file."""
    return {
        name: "{{ lookup('technician_ops_secret', '%s') }}" % name
        for name in sorted(ctx.secret_names)
        if _mentions(step.body, name) or (name in ctx.params and _mentions(step.body, name.upper()))
    }


def _with_no_log(task: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
    if not secrets or "no_log" in task:
        return task
    text = dump_yaml(task)
    if any(_mentions(text, s) for s in secrets):
        return {**task, "no_log": True}
    return task


def _with_retries(task: dict[str, Any], retries: int, delay: int) -> dict[str, Any]:
    if "block" in task or "until" in task:
        return task
    register = task.get("register") or "technician_ops_attempt"
    return {**task, "register": register, "retries": retries, "delay": delay, "until": f"{register} is succeeded"}


# ``ansible_*`` variables Ansible defines itself that are not facts: magic and
# connection variables.  Anything else named ``ansible_*`` is taken for a fact
# (``ansible_hostname``, ``ansible_python.version``...): wrongly gathering
# costs a second, wrongly not gathering fails the step on an undefined variable.
_NOT_FACTS = frozenset({
    "host", "port", "user", "password", "connection", "timeout", "pipelining", "private_key_file", "remote_tmp",
    "remote_user", "shell_type", "shell_executable", "python_interpreter", "module_compression", "async_dir",
    "check_mode", "diff_mode", "forks", "inventory_sources", "limit", "verbosity", "version", "config_file",
    "loop", "loop_var", "index_var", "play_batch", "play_hosts", "play_hosts_all", "play_name", "play_role_names",
    "playbook_python", "role_name", "role_names", "parent_role_names", "parent_role_paths", "dependent_role_names",
    "collection_name", "run_tags", "skip_tags", "search_path", "failed_task", "failed_result", "managed",
    "become",
})
_NOT_FACT_PREFIXES = ("become_", "ssh_", "sftp_", "scp_", "paramiko_", "winrm_", "psrp_", "httpapi_", "netconf_",
                      "network_", "persistent_", "docker_", "kubectl_", "jinja2_", "vault_")
_ANSIBLE_VAR = re.compile(r"(?<![A-Za-z0-9_])ansible_([A-Za-z0-9_]+)")
_ROLE = re.compile(r"(?<![A-Za-z0-9_.])(?:ansible\.builtin\.)?(?:include|import)_role\s*:")


def uses_facts(step: Step) -> bool:
    """Whether ``step`` reads gathered facts, so its play must gather them.

    ``facts=true|false`` on the fence decides when given; otherwise a role
    (``include_role``/``import_role``: its tasks cannot be read here), or any
    ``ansible_facts`` or fact-like ``ansible_*`` name in the body or in
    ``when`` does.  Steps that do not read facts never gather (issue 9:
    gathering cost 1.40x at 10 hosts).
    """
    explicit = step.attrs.get("facts")
    if explicit is not None:
        return explicit.lower() in ("true", "yes")
    if _ROLE.search(step.body):  # a role's tasks are out of sight: gather, as ansible-playbook would
        return True
    for text in (step.body, step.attrs.get("when", "")):
        for m in _ANSIBLE_VAR.finditer(text):
            name = m.group(1)
            if name not in _NOT_FACTS and not name.startswith(_NOT_FACT_PREFIXES):
                return True
    return False
