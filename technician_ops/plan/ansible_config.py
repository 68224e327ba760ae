"""The run's ansible.cfg: the team's own configuration, with technician-ops' required settings on top.

A team's ``ansible.cfg`` carries its ``roles_path``, ``collections_path``,
callbacks, ``become`` and SSH settings; a playbook run through technician-ops
must see them as ``ansible-playbook`` would.  So the configuration
``ansible-playbook`` would read (``ANSIBLE_CONFIG``, the project's
``ansible.cfg``, ``~/.ansible.cfg``, ``/etc/ansible/ansible.cfg``: the first
that exists) is the base of the generated file, and technician-ops layers its
own settings on top in three ways:

- ``REQUIRED``: ours win (the audit record and the undo depend on them); a
  different value of the team's is reported as a notice;
- ``FIRST``: path lists, ours first, the team's after (our plugins, the
  project's ``roles/``);
- defaults: the team's value wins when it sets one.

Relative paths in the base resolve against its directory, as Ansible's own
do; the generated file lives elsewhere (the run's private data dir), so they
are made absolute.  The whole effective file is kept in the audit record.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from technician_ops.errors import ConfigError

Settings = dict[str, dict[str, str]]  # section -> key -> raw value

# Ours always: each names why.
REQUIRED = {
    ("defaults", "host_key_checking"): "an unknown host key must stop a run, never be accepted silently",
    ("defaults", "retry_files_enabled"): "a run's files stay in its private directory",
    ("defaults", "forks"): "technician-ops sizes forks per run (set [tool.technician-ops] forks to choose)",
    ("defaults", "strategy"): "--accelerate needs mitogen's strategy",
    ("defaults", "keep_remote_files"): "module arguments (a secret on stdin) must not stay on the hosts",
    ("defaults", "display_args_to_stdout"): "task arguments are not shown: they may hold a secret",
    ("ssh_connection", "control_path_dir"): "a run's SSH connections live in its own directory and end with it",
    ("ssh_connection", "control_path"): "a run's SSH connections live in its own directory and end with it",
}
# Settings of the team's that are left out, each with why.
DROPPED = {
    ("defaults", "log_path"): "Ansible's log would keep task output the run's redaction never sees: the record is the log",
}
# Options of the team's ssh_args that would turn host key checking off behind ``host_key_checking``.
_SSH_OFF = re.compile(r"-o\s*(StrictHostKeyChecking|UserKnownHostsFile)\s*=?\s*(no|off|/dev/null)\b", re.I)
FIRST = {("defaults", "action_plugins"), ("defaults", "lookup_plugins"), ("defaults", "filter_plugins"), ("defaults", "roles_path"),
         ("defaults", "strategy_plugins")}
APPENDED = {("ssh_connection", "ssh_args")}  # the team's options first: ssh keeps the first value of an option


@dataclass(frozen=True)
class BaseConfig:
    """The team's configuration file, parsed."""

    path: Path
    sha256: str
    settings: Settings = field(default_factory=dict)

    def describe(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256}


def find(project_root: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file ``ansible-playbook`` run in the project would read (ansible-config's search order)."""
    env = os.environ if environ is None else environ
    candidates: list[Path] = []
    if env.get("ANSIBLE_CONFIG"):
        given = Path(env["ANSIBLE_CONFIG"]).expanduser()
        candidates.append(given / "ansible.cfg" if given.is_dir() else given)
    candidates += [project_root / "ansible.cfg", Path("~/.ansible.cfg").expanduser(), Path("/etc/ansible/ansible.cfg")]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    return None


def read(path: Path) -> BaseConfig:
    """Parse ``path`` as Ansible does (INI, ``;`` inline comments); a broken file is a ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    parser = _parser()
    try:
        parser.read_string(data.decode("utf-8"), source=str(path))
    except configparser.ParsingError as exc:
        bad_line, text = exc.errors[0] if exc.errors else (0, "")
        raise ConfigError(f"{path}:{bad_line}: not a valid ansible.cfg line: {text.strip()!r}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        lineno = getattr(exc, "lineno", None)
        where = f"{path}:{lineno}" if lineno else str(path)
        raise ConfigError(f"{where}: not a valid ansible.cfg: {str(exc).splitlines()[0]}") from None
    settings = {section: dict(parser.items(section, raw=True)) for section in parser.sections()}
    _absolute_paths(settings, path.parent)
    return BaseConfig(path, hashlib.sha256(data).hexdigest(), settings)


def merge(ours: Settings, base: BaseConfig | None,
          required: Mapping[tuple[str, str], str] = REQUIRED) -> tuple[str, list[str]]:
    """The effective ansible.cfg text, and a notice for each of the team's settings ours replaced
    (``required``: ours always, each with why)."""
    settings: Settings = {s: dict(v) for s, v in (base.settings if base else {}).items()}
    notices: list[str] = []
    for (section, key), why in DROPPED.items():
        if settings.get(section, {}).pop(key, None) is not None:
            notices.append(f"{base.path if base else 'ansible.cfg'}: [{section}] {key} is left out: {why}")
    for section, values in ours.items():
        target = settings.setdefault(section, {})
        for key, value in values.items():
            theirs = target.get(key)
            if theirs is None or theirs == value:
                target[key] = value
            elif (section, key) in required:
                target[key] = value
                notices.append(f"{base.path if base else 'ansible.cfg'}: [{section}] {key} = {theirs} is replaced "
                               f"by {value}: {required[(section, key)]}")
            elif (section, key) in FIRST:
                target[key] = ":".join(dict.fromkeys([*value.split(":"), *theirs.split(":")]))
            elif (section, key) in APPENDED:
                if _SSH_OFF.search(theirs):
                    notices.append(f"{base.path if base else 'ansible.cfg'}: [{section}] {key}: "
                                   f"{', '.join(m.group(0) for m in _SSH_OFF.finditer(theirs))} dropped: an unknown "
                                   "host key must stop a run")
                    theirs = _SSH_OFF.sub("", theirs).strip()
                target[key] = f"{theirs} {value}".strip()
            # else: the team's value stands
    parser = _parser()
    for section, values in settings.items():
        parser[section] = values
    out = io.StringIO()
    parser.write(out)
    return out.getvalue(), notices


def _parser() -> configparser.RawConfigParser:
    # Ansible reads ansible.cfg with ConfigParser(inline_comment_prefixes=(';',)); raw here so that a
    # value is written back exactly as the team wrote it, for Ansible to interpret the same way.
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=False)
    parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
    return parser


def _absolute_paths(settings: Settings, base_dir: Path) -> None:
    """Make the base's relative path settings absolute (Ansible resolves them against the file's dir)."""
    kinds = _path_settings()
    for section, values in settings.items():
        for key, value in values.items():
            kind = kinds.get((section, key))
            if kind is None or not value.strip():
                continue
            sep = {"pathspec": ":", "pathlist": ","}.get(kind)  # Ansible's own separators for these types
            parts = value.split(sep) if sep else [value]
            values[key] = (sep or "").join(_absolute(p.strip(), base_dir) for p in parts)


def _absolute(value: str, base_dir: Path) -> str:
    if not value or value.startswith(("/", "~", "$", "{")):
        return value
    return str(base_dir / value)


def _path_settings() -> dict[tuple[str, str], str]:
    """(section, key) -> type of every path-typed setting in ansible-core's own definitions."""
    import ansible.config
    import yaml

    defs = yaml.load((Path(ansible.config.__file__).parent / "base.yml").read_text(encoding="utf-8"),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out: dict[tuple[str, str], str] = {}
    for entry in defs.values():
        kind = str(entry.get("type") or "")
        if kind in ("path", "pathspec", "pathlist", "tmppath"):
            for ini in entry.get("ini") or []:
                out[(str(ini.get("section")), str(ini.get("key")).lower())] = kind
    # Plugin options Ansible also reads as paths, by the plugins' own docs.
    out.setdefault(("ssh_connection", "control_path_dir"), "path")
    out.setdefault(("persistent_connection", "control_path_dir"), "path")
    return out
