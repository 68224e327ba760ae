"""``shell``: a script run on the step's hosts.

Parameters reach the script as environment variables (``$PRIMARY``), never
spliced into its text: the script is marked unsafe so Ansible does not
template it either, which is what makes ``{{`` in a script harmless.  Secret
parameters are not put in the task's ``environment`` (Ansible turns that into
a ``VAR=value`` prefix on the remote command line, visible in ``ps``): they
arrive on stdin and a short prologue exports them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.runbook.refs import ENV_FIELDS, env_name as step_env_name, env_refs
from technician_ops.runbook.yamlio import Unsafe
from technician_ops.steps.base import BodyError, CompileContext, StepKind

SHELLS = {"sh": "/bin/sh", "shell": "/bin/sh", "bash": "/bin/bash"}


def env_name(param: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", param).upper()


# Secrets travel on the script's stdin (base64, one NAME=VALUE per line) and
# are exported by this prologue, so they never appear on a command line.
SECRET_PROLOGUE = (
    "while IFS= read -r __tops_kv && [ -n \"$__tops_kv\" ]; do "
    "export \"${__tops_kv%%=*}=$(printf '%s' \"${__tops_kv#*=}\" | base64 -d)\"; done; unset __tops_kv\n"
)


def script_task(step: Step, ctx: CompileContext, *, read_only: bool) -> dict[str, Any]:
    script = step.body
    env: dict[str, str] = {"TECHNICIAN_OPS_HOST": "{{ inventory_hostname }}"}
    secrets: list[str] = []
    for name in ctx.params:
        var = env_name(name)
        if name in ctx.secret_names:
            # A secret reaches only scripts that mention it, and only via stdin.
            if re.search(rf"\$\{{?{var}\b", script):
                secrets.append(name)
            continue
        env[var] = "{{ %s }}" % name
    for name in env_refs(script, ctx.extra.get("step_names") or []):  # an earlier step's output, as data
        for field in ENV_FIELDS:
            env[step_env_name(name, field)] = "{{ (steps[%s] | default({}))[%s] | default('') }}" % (
                json.dumps(name), json.dumps(field))
    args: dict[str, Any] = {"cmd": Unsafe(SECRET_PROLOGUE + script if secrets else script),
                            "executable": SHELLS.get(step.lang, "/bin/sh")}
    if secrets:
        args["stdin"] = "\n".join("%s={{ %s | string | b64encode }}" % (env_name(n), n) for n in secrets)
    task: dict[str, Any] = {"name": step.name, "ansible.builtin.shell": args, "environment": env}
    if read_only:
        task["changed_when"] = False
        task["check_mode"] = False
    if secrets:
        task["no_log"] = True
    return task


class ShellKind(StepKind):
    name = "shell"
    languages = ("sh", "bash", "shell")

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        if not body.strip():
            raise BodyError("shell step has an empty script")
        return body

    def tasks(self, step: Step, ctx: CompileContext) -> list[dict[str, Any]]:
        return [script_task(step, ctx, read_only=False)]


KIND = ShellKind()
