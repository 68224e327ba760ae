"""``shell``: a script run on the step's hosts.

Parameters reach the script as environment variables (``$PRIMARY``), never
spliced into its text: the script is marked unsafe so Ansible does not
template it either, which is what makes ``{{`` in a script harmless.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..model import Step
from .base import BodyError, CompileContext, StepKind

SHELLS = {"sh": "/bin/sh", "shell": "/bin/sh", "bash": "/bin/bash"}


def env_name(param: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", param).upper()


def script_task(step: Step, ctx: CompileContext, *, read_only: bool) -> dict[str, Any]:
    script = step.body
    env: dict[str, str] = {"TECHNICIAN_OPS_HOST": "{{ inventory_hostname }}"}
    secret_used = False
    for name in ctx.params:
        var = env_name(name)
        if name in ctx.secret_names:
            # A secret is exported only to scripts that mention it.
            if not re.search(rf"\$\{{?{var}\b", script):
                continue
            secret_used = True
        env[var] = "{{ %s }}" % name
    task: dict[str, Any] = {
        "name": step.name,
        "ansible.builtin.shell": {"cmd": Unsafe(script), "executable": SHELLS.get(step.lang, "/bin/sh")},
        "environment": env,
    }
    if read_only:
        task["changed_when"] = False
        task["check_mode"] = False
    if secret_used:
        task["no_log"] = True
    return task


class Unsafe(str):
    """A string Ansible must never template (dumped as ``!unsafe``)."""


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
