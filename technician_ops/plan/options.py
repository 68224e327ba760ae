"""ansible-playbook's own run options: ``--limit``, ``--tags``/``--skip-tags``, ``--diff``, ``-e``.

An operator who knows ``ansible-playbook`` types these by habit; a run takes
them with the same meaning, for every Ansible step, and records them.

- ``--limit PATTERN``: Ansible's host pattern (or ``@FILE``), resolved against
  the inventory before anything runs, so preflight, the record and the undo
  see exactly the hosts that will be touched.  Controller steps (``approve``,
  ``backup``...) are not hosts: they always run.
- ``--tags``/``--skip-tags``: every step's tasks carry the step's name as a
  tag, besides the tags written inside an ``ansible`` or ``playbook`` step, so
  ``--tags restart-db`` runs one step.  ``approve`` and ``check`` steps are
  gates: they run unless skipped by name.  Undo plays never filter by tag:
  what ran is undone whatever was asked.
- ``-e``: Ansible's ``KEY=VALUE`` (a string), an inline YAML/JSON mapping, or
  ``@FILE``.  A key that is a parameter of the runbook binds that parameter,
  typed and checked as ``-p`` would; any other key becomes an extra variable,
  data that is never templated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ParameterError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$", re.ASCII)
# Names that carry credentials by convention (ansible_become_password, api_token, vault_secret...).
_SECRET_NAME = re.compile(r"(?:^|_)(?:pass(?:word|wd|phrase)?|token|secret|credentials?|api_?key)(?:_|$)", re.I)
RESERVED_PREFIX = "technician_ops"
MAX_EXTRA_VARS_BYTES = 1 << 20  # an -e @FILE larger than this is not a set of variables
LIMIT_FILE = "limit.txt"
EXTRA_VARS_FILE = "extra-vars.yml"
GATE_TAG = "always"  # Ansible's tag for tasks that run whatever --tags selects


@dataclass(frozen=True)
class AnsibleOptions:
    """What ``run`` passes to Ansible besides the plan; empty by default."""

    limit: str | None = None
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    diff: bool = False
    extra_vars: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.limit or self.tags or self.skip_tags or self.diff or self.extra_vars)

    def record(self) -> dict[str, Any]:
        """As the audit record keeps them (the caller redacts secret values)."""
        return {"limit": self.limit, "tags": list(self.tags), "skip_tags": list(self.skip_tags), "diff": self.diff,
                "extra_vars": dict(self.extra_vars)}

    @classmethod
    def from_record(cls, data: Any) -> AnsibleOptions:
        if not isinstance(data, dict):
            return cls()
        extra = data.get("extra_vars")
        return cls(data.get("limit"), tuple(data.get("tags") or ()), tuple(data.get("skip_tags") or ()),
                   bool(data.get("diff")), dict(extra) if isinstance(extra, dict) else {})


def split_tags(values: Sequence[str]) -> tuple[str, ...]:
    """``--tags a,b --tags c`` -> ``("a", "b", "c")``, as ansible-playbook splits them."""
    out: list[str] = []
    for value in values:
        out.extend(t.strip() for t in value.split(",") if t.strip())
    return tuple(dict.fromkeys(out))


def parse_extra_vars(items: Sequence[str], params: Mapping[str, Any], *, cwd: Path | None = None
                     ) -> tuple[dict[str, Any], dict[str, str]]:
    """``-e`` items -> (extra variables, assignments to the runbook's own parameters).

    Later items win over earlier ones, as in ansible-playbook; a parameter
    is returned as its text so ``params.bind`` types it like ``-p``.
    """
    merged: dict[str, Any] = {}
    for item in items:
        merged.update(_one(item, cwd or Path.cwd()))
    extra: dict[str, Any] = {}
    assigned: dict[str, str] = {}
    problems: list[str] = []
    for key, value in merged.items():
        if not isinstance(key, str) or not _NAME.match(key):
            problems.append(f"-e: {key!r} is not a variable name (letters, digits, _; not starting with a digit)")
        elif key.lower().startswith(RESERVED_PREFIX):
            problems.append(f"-e: {key!r}: names starting with {RESERVED_PREFIX!r} are technician-ops' own")
        elif key == "steps":
            problems.append("-e: 'steps' holds what earlier steps printed (docs/outputs.md): pick another name")
        elif _SECRET_NAME.search(key) and key not in params:
            problems.append(f"-e: {key!r} looks like a credential: an -e value is written to the run's files and kept "
                            "in its record; declare a secret parameter instead (docs/security.md)")
        elif not _string_keys(value):
            problems.append(f"-e: {key!r}: every key of a mapping in it must be a string")
        elif key in params:
            if isinstance(value, (dict, list)):
                problems.append(f"-e: {key!r} is a parameter of this runbook: give it one value, not a "
                                f"{type(value).__name__}")
            else:
                assigned[key] = "true" if value is True else "false" if value is False else str(value)
        elif _reserved(key):
            problems.append(f"-e: {key!r} is a name Ansible reserves (a play keyword or magic variable)")
        else:
            extra[key] = value
    if problems:
        raise ParameterError("\n".join(problems))
    return extra, assigned


def _string_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _string_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_string_keys(v) for v in value)
    return True


def _one(item: str, cwd: Path) -> dict[str, Any]:
    text = item.strip()
    if text.startswith("@"):
        return _from_file(cwd / text[1:])
    if text.startswith("{"):
        return _mapping(text, f"-e {item!r}")
    # Ansible's own KEY=VALUE parser: quotes, and a {{ ... }} kept whole, exactly as ansible-playbook -e.
    from ansible.errors import AnsibleError
    from ansible.parsing.splitter import parse_kv

    try:
        pairs = parse_kv(text)
    except AnsibleError as exc:
        raise ParameterError(f"-e {item!r}: {exc.message}") from None
    if not pairs or "_raw_params" in pairs:
        raise ParameterError(f"-e {item!r}: write KEY=VALUE (quote a value with spaces), an inline YAML/JSON "
                             "mapping, or @FILE")
    return {str(k): str(v) for k, v in pairs.items()}  # Ansible's KEY=VALUE is a string: 1 stays "1"


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_EXTRA_VARS_BYTES + 1)
    except OSError as exc:
        raise ParameterError(f"-e @{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_EXTRA_VARS_BYTES:
        raise ParameterError(f"-e @{path}: larger than {MAX_EXTRA_VARS_BYTES} bytes")
    return _mapping(data.decode("utf-8", errors="replace"), str(path))


def _mapping(text: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        value = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ParameterError(f"{where}{line}: not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParameterError(f"{where}: extra variables must be a mapping of names to values")
    return value


def _reserved(name: str) -> bool:
    # Play keywords and Ansible's magic variables: an extra variable of that name would change
    # how plays run, not what a task reads.  Asked of Ansible itself, and only when -e is used.
    from ansible.vars.reserved import is_reserved_name

    return bool(is_reserved_name(name)) or name in {"hostvars", "groups", "group_names", "inventory_hostname",
                                                   "omit", "play_hosts", "ansible_play_hosts", "vars", "environment"}


def cmdline(options: AnsibleOptions, directory: Path, *, phase: str) -> list[str]:
    """ansible-playbook's arguments for one execution; ``phase`` "rollback" drops the limit and tags:
    an undo runs on exactly the hosts its step changed, whatever the forward run selected."""
    args: list[str] = []
    if phase == "run":
        if options.limit is not None:
            args += ["--limit", f"@{directory / LIMIT_FILE}"]
        if options.tags:
            args += ["--tags", ",".join(options.tags)]
        if options.skip_tags:
            args += ["--skip-tags", ",".join(options.skip_tags)]
    if options.diff:
        args.append("--diff")
    if options.extra_vars:
        args += ["--extra-vars", f"@{directory / EXTRA_VARS_FILE}"]
    return args
