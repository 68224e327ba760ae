"""``playbook``: include a reusable playbook from the project's playbooks/.

Body: ``file: playbooks/x.yml`` plus optional ``vars``.  Compiled as a marker
play (so the event stream knows the step started) and an ``import_playbook``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.steps.base import BodyError, CompileContext, StepKind, load_yaml_body


class PlaybookKind(StepKind):
    name = "playbook"
    own_hosts = True  # the playbook's plays name their hosts
    expects_undo = False  # its contents are opaque: whether it needs an undo is the author's call

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        spec = load_yaml_body(body)
        if not isinstance(spec, dict) or "file" not in spec:
            raise BodyError("playbook step body must be a mapping with 'file: playbooks/NAME.yml'")
        unknown = set(spec) - {"file", "vars"}
        if unknown:
            raise BodyError(f"unknown key(s) in playbook step: {', '.join(sorted(unknown))} (allowed: file, vars)")
        if not isinstance(spec.get("vars", {}), dict):
            raise BodyError("playbook step 'vars' must be a mapping")
        path = (project_root / str(spec["file"])).resolve()
        if not path.is_file():
            raise BodyError(f"playbook file {spec['file']!r} not found under {project_root}")
        if project_root.resolve() not in path.parents:
            raise BodyError(f"playbook file {spec['file']!r} is outside the project")
        return {"file": str(spec["file"]), "vars": dict(spec.get("vars") or {})}

    def plays(self, step: Step, ctx: CompileContext, tasks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        marker = {"name": step.name, "hosts": "localhost", "gather_facts": False, "tasks": []}
        include: dict[str, Any] = {"import_playbook": str((ctx.project_root / step.spec["file"]).resolve())}
        from technician_ops.runbook.yamlio import Unsafe

        public = {k: v for k, v in ctx.params.items() if k not in ctx.secret_names}
        values = {k: (Unsafe(v) if isinstance(v, str) else v) for k, v in public.items()}
        include["vars"] = {**values, **step.spec["vars"]}
        return [marker, include]


KIND = PlaybookKind()
