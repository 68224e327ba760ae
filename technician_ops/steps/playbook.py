"""``playbook``: include a reusable playbook from the project's playbooks/.

Body: ``file: playbooks/x.yml`` plus optional ``vars`` and ``tags``.  Compiled
as a marker play (so the event stream knows the step started) and an
``import_playbook``, which runs as under ``ansible-playbook``: its plays pick
their hosts and gather facts as they say (``gather_facts``, else the
configuration's ``gathering``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.runbook.model import Step
from technician_ops.steps.base import BodyError, CompileContext, StepKind, load_yaml_body


class PlaybookKind(StepKind):
    name = "playbook"
    runs_on_nodes = False
    own_hosts = True  # the playbook's plays name their hosts
    expects_undo = False  # its contents are opaque: whether it needs an undo is the author's call

    def parse(self, body: str, lang: str, project_root: Path) -> Any:
        spec = load_yaml_body(body)
        if not isinstance(spec, dict) or "file" not in spec:
            raise BodyError("playbook step body must be a mapping with 'file: playbooks/NAME.yml'")
        unknown = set(spec) - {"file", "vars", "tags"}
        if unknown:
            raise BodyError(f"unknown key(s) in playbook step: {', '.join(sorted(unknown))} (allowed: file, vars, tags)")
        if not isinstance(spec.get("vars", {}), dict):
            raise BodyError("playbook step 'vars' must be a mapping")
        tags = spec.get("tags", [])
        tags = [tags] if isinstance(tags, str) else tags
        if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
            raise BodyError("playbook step 'tags' must be a tag or a list of tags")
        path = (project_root / str(spec["file"])).resolve()
        if not path.is_file():
            raise BodyError(f"playbook file {spec['file']!r} not found under {project_root}")
        if project_root.resolve() not in path.parents:
            raise BodyError(f"playbook file {spec['file']!r} is outside the project")
        return {"file": str(spec["file"]), "vars": dict(spec.get("vars") or {}), "tags": [t.strip() for t in tags]}

    def host_patterns(self, step: Step, project_root: Path) -> list[str] | None:
        """The ``hosts`` of the playbook's plays (through ``import_playbook``); None if one is templated."""
        return _play_hosts((project_root / step.spec["file"]).resolve(), set())

    def plays(self, step: Step, ctx: CompileContext, tasks: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        marker = {"name": step.name, "hosts": "localhost", "gather_facts": False, "tasks": []}
        include: dict[str, Any] = {"import_playbook": str((ctx.project_root / step.spec["file"]).resolve())}
        from technician_ops.runbook.yamlio import Unsafe

        public = {k: v for k, v in ctx.params.items() if k not in ctx.secret_names}
        values = {k: (Unsafe(v) if isinstance(v, str) else v) for k, v in public.items()}
        include["vars"] = {**values, **step.spec["vars"]}
        if step.spec.get("tags"):
            include["tags"] = list(step.spec["tags"])
        return [marker, include]


def _play_hosts(path: Path, seen: set[Path]) -> list[str] | None:
    import yaml

    from technician_ops.runbook.yamlio import load as load_yaml

    if path in seen:
        return []
    seen.add(path)
    try:
        plays = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # unreadable, or Ansible-only tags (!vault): cannot tell
        return None
    if not isinstance(plays, list):
        return None
    patterns: list[str] = []
    for play in plays:
        if not isinstance(play, dict):
            return None
        imported = play.get("import_playbook") or play.get("ansible.builtin.import_playbook")
        if imported is not None:
            if "{" in str(imported):
                return None
            more = _play_hosts((path.parent / str(imported)).resolve(), seen)
            if more is None:
                return None
            patterns.extend(more)
            continue
        hosts = play.get("hosts")
        names = hosts if isinstance(hosts, list) else [hosts]
        if not names or not all(isinstance(h, str) and h and "{" not in h for h in names):
            return None
        patterns.append(",".join(str(h) for h in names))
    return list(dict.fromkeys(patterns))


KIND = PlaybookKind()
