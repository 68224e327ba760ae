"""plan: a runbook bound to parameters compiles to ONE Ansible playbook.

One play per step, in document order, inside a fresh ansible-runner private
data dir.  The rollback playbook is compiled later, from what actually
completed, so it targets exactly the hosts each step touched.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from technician_ops import steps as kinds
from technician_ops.errors import RunbookError, Diagnostic
from technician_ops.steps.base import CompileContext, StepKind
from technician_ops.steps.shell import Unsafe
from technician_ops.runbook.model import Runbook, Step
from technician_ops.runbook.params import parse_duration

PLUGIN_DIR = Path(__file__).parent / "ansible_plugins"
UNDO_TASK_TIMEOUT = 600  # seconds per undo task unless the step sets timeout=
MAX_FORKS = 50
# How long gathered facts are reused across runs (Ansible's jsonfile cache, under the state dir).
FACT_CACHE_TIMEOUT = 3600


@dataclass(frozen=True)
class PlanStep:
    step: Step
    kind: StepKind
    hosts: str  # rendered host pattern ("localhost" for controller steps)
    undo: Step | None

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def has_undo(self) -> bool:
        return self.undo is not None or self.kind.has_auto_undo(self.step)


@dataclass(frozen=True)
class Plan:
    """Immutable: what will run, for which parameters, against which inventory."""

    runbook: Runbook
    project_root: Path
    params: dict[str, Any]
    steps: tuple[PlanStep, ...]
    check: bool = False
    inventory: tuple[Path, ...] = ()
    forks: int = field(default_factory=lambda: os.cpu_count() or 2)
    run_id: str = "compiled"
    state_dir: Path = Path(".technician-ops")

    @property
    def secret_names(self) -> set[str]:
        return self.runbook.secret_names()

    @property
    def uses_facts(self) -> bool:
        """Whether any step, or any undo block, reads gathered facts (see ``uses_facts``)."""
        return any(uses_facts(ps.step) or (ps.undo is not None and uses_facts(ps.undo)) for ps in self.steps)

    @property
    def public_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in self.secret_names}

    def context(self, phase: str = "run", hosts: Any = None) -> CompileContext:
        extra = {"run_id": self.run_id, "state_dir": self.state_dir}
        return CompileContext(self.runbook, self.project_root, self.params, self.secret_names, self.check, phase, hosts, extra)

    def playbook(self) -> list[dict[str, Any]]:
        plays: list[dict[str, Any]] = []
        for ps in self.steps:
            plays.extend(ps.kind.plays(ps.step, self.context("run", ps.hosts)))
        return plays

    def rollback_playbook(self, completed: list[tuple[PlanStep, list[str]]]) -> list[dict[str, Any]]:
        """Undo plays for ``completed`` (step, hosts it ran on), in reverse order."""
        plays: list[dict[str, Any]] = []
        for ps, hosts in reversed(completed):
            ctx = self.context("rollback", hosts)
            if ps.undo is not None:
                undo_kind = kinds.registry()[ps.undo.kind]
                undo_step = ps.undo
                if undo_step.hosts:  # an explicit hosts= on the undo block wins
                    ctx.hosts = render(undo_step.hosts, self.public_params, undo_step)
                tasks = undo_kind.tasks(undo_step, ctx)
                play_list = [standard_play(undo_kind, undo_step, ctx, tasks)]
            else:
                undo_step = ps.step
                play_list = [standard_play(ps.kind, ps.step, ctx, ps.kind.undo_tasks(ps.step, ctx))]
            for play in play_list:
                play["name"] = f"undo:{ps.name}"
                # An undo must not stop the other undos: a failed host is
                # rescued (the failure is still in the event stream) and
                # unreachable hosts do not leave later plays.
                play.pop("any_errors_fatal", None)
                play.pop("max_fail_percentage", None)
                play.pop("serial", None)
                play["ignore_unreachable"] = True
                block = play["tasks"][0]
                block.setdefault("timeout", UNDO_TASK_TIMEOUT)  # a hung host cannot hang the rollback
                block["rescue"] = [{"name": "undo failed", "ansible.builtin.set_fact": {"technician_ops_undo_failed": True}}]
                plays.append(play)
        return plays


def render(template: str, values: dict[str, Any], step: Step) -> str:
    """Render an attribute value with our sandbox (StrictUndefined)."""
    if "{" not in template:
        return template
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    try:
        return SandboxedEnvironment(undefined=StrictUndefined).from_string(template).render(values)
    except TemplateError as exc:
        raise RunbookError([Diagnostic(step_path(step), step.line, f"cannot render {template!r}: {exc}")]) from None


def step_path(step: Step) -> str:
    return "runbook"


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


def uses_facts(step: Step) -> bool:
    """Whether ``step`` reads gathered facts, so its play must gather them.

    ``facts=true|false`` on the fence decides when given; otherwise any
    ``ansible_facts`` or fact-like ``ansible_*`` name in the body or in
    ``when`` does.  Steps that do not read facts never gather (issue 9:
    gathering cost 1.40x at 10 hosts).
    """
    explicit = step.attrs.get("facts")
    if explicit is not None:
        return explicit.lower() in ("true", "yes")
    for text in (step.body, step.attrs.get("when", "")):
        for m in _ANSIBLE_VAR.finditer(text):
            name = m.group(1)
            if name not in _NOT_FACTS and not name.startswith(_NOT_FACT_PREFIXES):
                return True
    return False


def default_forks(targets: int, *, remote: bool, cpus: int | None = None) -> int:
    """Ansible's ``forks`` for a run whose project does not set it.

    Local-connection hosts get one worker per CPU: each task starts a fresh
    interpreter, CPU-bound, so more workers only queue (issue 9 measured one
    per CPU at 0.92x of forks 5; docs/performance.md has ours).  SSH hosts,
    and every host under mitogen (``remote``), get one worker per target up
    to 50: there a worker mostly waits, on the network or on mitogen's
    per-host interpreter (mitogen, 50 local hosts, 2 cores: ~17 s with 10 to
    50 forks, ~23 s with 2).
    """
    cpus = cpus or os.cpu_count() or 2
    return max(cpus, min(targets, MAX_FORKS)) if remote else cpus


def build_plan(runbook: Runbook, project_root: Path, params: dict[str, Any], *, check: bool = False,
               inventory: tuple[Path, ...] = (), run_id: str = "compiled", state_dir: Path | None = None) -> Plan:
    registry = kinds.registry()
    public = {k: v for k, v in params.items() if k not in runbook.secret_names()}
    steps = []
    for step in runbook.steps:
        kind = registry[step.kind]
        pattern = "localhost" if kind.controller else (step.hosts or runbook.hosts or "")
        try:
            hosts = render(pattern, public, step)
        except RunbookError as exc:
            raise RunbookError([Diagnostic(runbook.path, d.line, d.message) for d in exc.diagnostics]) from None
        steps.append(PlanStep(step, kind, hosts, runbook.undos.get(step.name)))
    return Plan(runbook, project_root, params, tuple(steps), check, inventory,
                run_id=run_id, state_dir=state_dir or project_root / ".technician-ops")


def standard_play(kind: StepKind, step: Step, ctx: CompileContext, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    attrs = step.attrs
    hosts: Any = ctx.hosts
    if kind.controller:
        hosts = "localhost"
    elif isinstance(hosts, list):
        hosts = ",".join(hosts) if hosts else "!all"
    play: dict[str, Any] = {"name": step.name, "hosts": hosts, "gather_facts": uses_facts(step)}
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
        block["when"] = attrs["when"]
    if "timeout" in attrs:
        block["timeout"] = parse_duration(attrs["timeout"])
    if attrs.get("continue_on_error", "false").lower() in ("true", "yes"):
        block["ignore_errors"] = True
    play["tasks"] = [block]
    return play


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


# -- writing the files ansible-runner reads ------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _unsafe_representer(dumper: yaml.SafeDumper, data: Unsafe) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("!unsafe", str(data), style=style)


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(Unsafe, _unsafe_representer)
_Dumper.add_representer(str, _str_representer)
_Dumper.add_multi_representer(str, _str_representer)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def ansible_cfg(plan: Plan, state_dir: Path, *, accelerate: Path | None = None) -> str:
    """The run's ansible.cfg.  ``accelerate``: mitogen's strategy plugin dir (see accelerate.py), or None."""
    lines = [
        "# Generated by technician-ops: the settings of this run.",
        "[defaults]",
        f"forks = {plan.forks}",
        # Facts only for the plays that read them; with a cache, a host's facts
        # are gathered once per FACT_CACHE_TIMEOUT, not once per run.
        *([
            "gathering = smart",
            "fact_caching = jsonfile",
            f"fact_caching_connection = {state_dir / 'facts'}",
            f"fact_caching_timeout = {FACT_CACHE_TIMEOUT}",
        ] if plan.uses_facts else ["gathering = explicit"]),
        "retry_files_enabled = False",
        "host_key_checking = True",
        "interpreter_python = auto_silent",
        "deprecation_warnings = False",
        "localhost_warning = False",
        f"action_plugins = {PLUGIN_DIR / 'action'}",
        f"lookup_plugins = {PLUGIN_DIR / 'lookup'}",
        f"roles_path = {plan.project_root / 'roles'}",
        "timeout = 10",
        *([f"strategy_plugins = {accelerate}", "strategy = mitogen_linear"] if accelerate else []),
        "[ssh_connection]",
        "pipelining = True",
        # Control sockets stay in Ansible's short default dir (~/.ansible/cp):
        # a project path easily exceeds the 108-byte Unix socket limit.
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3",
        "",
    ]
    return "\n".join(lines)


# mitogen ignores ssh_args: the same dead-peer detection as our SSH settings
# (5 s x 3), so a host that drops off the network cannot stall a run for
# mitogen's default 30 s x 10.
MITOGEN_VARS = {"mitogen_ssh_keepalive_interval": 5, "mitogen_ssh_keepalive_count": 3}


def controller_inventory(local_hosts_needing_python: list[str], *, accelerate: bool = False) -> str:
    """Extra inventory: the controller's interpreter for local-connection hosts.

    Interpreter discovery picks wrong behind pyenv shims, so hosts that run
    on the controller use the interpreter technician-ops itself runs on.
    """
    py = sys.executable
    # Controller steps use Ansible's implicit localhost, which already runs on
    # this interpreter and, unlike an inventory host, never matches "all".
    group: dict[str, Any] = {}
    if local_hosts_needing_python:
        group["hosts"] = {name: {"ansible_python_interpreter": py} for name in local_hosts_needing_python}
    if accelerate:
        group["vars"] = dict(MITOGEN_VARS)
    return "# Generated by technician-ops\n" + dump_yaml({"all": group})


def params_file(plan: Plan) -> str:
    """Non-secret parameters, marked unsafe so a value is never templated."""
    values = {k: (Unsafe(v) if isinstance(v, str) else v) for k, v in plan.public_params.items()}
    values["technician_ops_check"] = plan.check
    return "# Generated by technician-ops: run parameters (secrets are never written here)\n" + dump_yaml(values)
