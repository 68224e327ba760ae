"""parse + validate: Markdown text -> ``Runbook``, or every problem at path:line.

Nothing runs on an invalid runbook: ``load_runbook`` raises ``RunbookError``
carrying all diagnostics; ``lint`` returns them (warnings too).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from technician_ops import steps as kinds
from technician_ops.runbook import yamlio
from technician_ops.runbook.cron import cron_problem
from technician_ops.runbook.attrs import AttrError, parse_attrs, split_info
from technician_ops.errors import Diagnostic, NotFound, RunbookError, TechnicianOpsError
from technician_ops.fsutil import read_regular
from technician_ops.project import Project
from technician_ops.runbook.fences import fences
from technician_ops.runbook.model import Param, Runbook, Step
from technician_ops.runbook.params import TYPES, coerce, parse_duration
from technician_ops.runbook.refs import env_mentions, env_name, jinja_refs
from technician_ops.errors import ParameterError

FRONT_MATTER_KEYS = {
    "name", "summary", "description", "hosts", "params", "secrets", "lock", "schedule",
    "timeout", "tags", "owner", "vars", "keep_backups", "triggers",
}
PARAM_KEYS = {"type", "required", "default", "help", "choices"}
COMMON_ATTRS = {
    "name", "kind", "hosts", "serial", "timeout", "when", "retries", "delay",
    "continue_on_error", "max_fail_percentage", "become", "become_user", "rollback", "facts", "undo",
}
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Collector:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[Diagnostic] = []

    def error(self, line: int, message: str) -> None:
        self.items.append(Diagnostic(self.path, line, message))

    def warn(self, line: int, message: str) -> None:
        self.items.append(Diagnostic(self.path, line, message, "warning"))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]


def load(name_or_path: str, project: Project, *, strict: bool = False, hosts: str | None = None) -> Runbook:
    """A runbook by name or path, parsed and validated.  ``hosts``: see ``load_runbook``."""
    return load_runbook(find_runbook(name_or_path, project.root), project.root, strict=strict, hosts=hosts)


def runbook_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The Markdown files of ``directory`` that are runbooks, and the others (a README, a Hugo or
    MkDocs page): a runbook's front matter has at least one technician-ops key."""
    ours: list[Path] = []
    others: list[Path] = []
    for path in sorted(directory.glob("*.md")):
        (ours if is_runbook(path) else others).append(path)
    return ours, others


def is_runbook(path: Path) -> bool:
    """Whether ``path`` starts with a front matter naming a technician-ops key (cheap: reads the head)."""
    if not path.is_file():
        return True  # a FIFO, a dangling link: lint says why (and never blocks on it)
    try:
        with path.open("rb") as fh:
            head = fh.read(MAX_FRONT_MATTER_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return True  # unreadable: let lint say why
    lines = head.split("\n")
    if not lines or lines[0].strip() != "---":
        return False
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
    if end is None:
        return True  # broken front matter: lint says so
    try:
        meta = yamlio.load("\n".join(lines[1:end]))
    except (yaml.YAMLError, RecursionError):
        return True
    return not isinstance(meta, dict) or bool(set(meta) & FRONT_MATTER_KEYS)


def list_runbooks(project: Project) -> list[tuple[Path, str, str]]:
    """(path, name, summary) of every runbook (other Markdown is skipped); unreadable ones say why."""
    out = []
    for path in runbook_files(project.runbooks_dir)[0]:
        try:
            rb = load_runbook(path, project.root)
            out.append((path, rb.name, rb.summary))
        except TechnicianOpsError as exc:
            out.append((path, path.stem, f"INVALID: {exc.message.splitlines()[0]}"))
    return out


def find_runbook(name_or_path: str, project_root: Path) -> Path:
    """A runbook by name (``db-failover``) under runbooks/, or by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".md" or "/" in name_or_path:
        path = candidate if candidate.is_absolute() else Path.cwd() / candidate
        if path.is_file():
            return path
        raise NotFound(f"runbook file {name_or_path} does not exist")
    path = project_root / "runbooks" / f"{name_or_path}.md"
    if path.is_file():
        return path
    available = sorted(p.stem for p in (project_root / "runbooks").glob("*.md"))
    raise NotFound(
        f"no runbook named {name_or_path!r} in {project_root / 'runbooks'}",
        hint=f"available: {', '.join(available)}" if available else "run 'technician-ops list'",
    )


def load_runbook(path: Path, project_root: Path | None = None, *, strict: bool = False,
                 hosts: str | None = None) -> Runbook:
    """``hosts``: the host pattern of a Markdown file that names none (``run --hosts``: a Runme README,
    a page of shell cells); it may then have no front matter at all."""
    runbook, diagnostics = _load(path, project_root, strict=strict, hosts=hosts)
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors or runbook is None:
        raise RunbookError(errors)
    return runbook


MAX_RUNBOOK_BYTES = 4 * 1024 * 1024
# Keys other tools keep in the same front matter (Runme; Hugo, Jekyll, MkDocs pages): ignored, never "a typo of".
FOREIGN_FRONT_MATTER = frozenset({"runme", "shell", "cwd", "skipPrompts", "terminalRows", "category", "title", "weight",
                                  "date", "draft", "slug", "aliases", "categories", "layout", "template", "author",
                                  "authors", "keywords", "hide", "search", "icon", "status", "toc", "menu", "type"})
MAX_FRONT_MATTER_BYTES = 64 * 1024  # what ``is_runbook`` reads to decide
# Runme's cell attributes (runme.dev): ``name`` names the step; ``id`` is Runme's own identity;
# a cell Runme leaves out of "run all", or runs in the background, is documentation here; the
# rest ask for a terminal session a step does not have: ignored, with a warning.
RUNME_ATTRS = frozenset({"id", "interactive", "promptEnv", "background", "closeTerminalOnSuccess", "category",
                         "terminalRows", "mimeType", "interpreter", "cwd", "skipPrompts", "excludeFromRunAll", "tag"})
_RUNME_NOT_A_STEP = ("excludeFromRunAll", "background")
_SHELLS = frozenset({"sh", "bash", "shell", "zsh"})


def _without_prompts(script: str) -> str:
    """A Runme cell's script as Runme runs it: a line's leading ``$ `` prompt is not part of the command."""
    return "\n".join(line[2:] if line.startswith("$ ") else line for line in script.split("\n"))


def _read_regular(path: Path) -> str:
    """The runbook's text (``fsutil.read_regular``: never a FIFO or device, never larger than a runbook)."""
    return read_regular(path, MAX_RUNBOOK_BYTES).decode("utf-8")


def lint(path: Path, project_root: Path | None = None, *, strict: bool = False,
         hosts: str | None = None) -> list[Diagnostic]:
    return _load(path, project_root, strict=strict, hosts=hosts)[1]


def _load(path: Path, project_root: Path | None, *, strict: bool,
          hosts: str | None = None) -> tuple[Runbook | None, list[Diagnostic]]:
    project_root = project_root or _guess_root(path)
    shown = _display_path(path)
    out = _Collector(shown)
    try:
        text = _read_regular(path)
    except (OSError, UnicodeDecodeError) as exc:
        out.error(1, f"cannot read runbook: {getattr(exc, 'strerror', None) or exc}")
        return None, out.items
    meta: dict[str, Any] | None
    key_lines: dict[str, int]
    if hosts is not None and not text.startswith("---"):
        meta, key_lines, body_text = {}, {}, text  # named hosts and no front matter: a page of cells
    else:
        meta, key_lines, body_text = _front_matter(text, out, strict=strict)
    if meta is None:
        return None, out.items
    if hosts is not None and not meta.get("hosts"):
        meta = {**meta, "hosts": hosts}
    params = _params(meta, key_lines, out)
    secrets = _secrets(meta, key_lines, params, out)
    timeout = None
    if meta.get("timeout") is not None:
        try:
            timeout = parse_duration(meta["timeout"])
        except ValueError as exc:
            out.error(key_lines.get("timeout", 1), str(exc))
    schedule = meta.get("schedule")
    if schedule is not None:
        problem = cron_problem(str(schedule))
        if problem:
            out.error(key_lines.get("schedule", 1), f"invalid schedule {schedule!r}: {problem}")
    for key in ("name", "summary", "hosts", "lock"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            out.error(key_lines.get(key, 1), f"front matter '{key}' must be a string")
    for key in ("name", "lock"):  # they name files, cron entries, systemd units: a slug, nothing else
        value = meta.get(key)
        if isinstance(value, str) and not _SLUG.match(value):
            out.error(key_lines.get(key, 1), f"front matter '{key}' {value!r} must be a slug: letters, digits, "
                      "'.', '_' and '-', starting with a letter or digit, at most 100 characters")
    if "name" not in meta and not _SLUG.match(path.stem):
        out.error(1, f"the runbook's name comes from its file name {path.stem!r}, which is not a slug "
                  "(letters, digits, '.', '_', '-'): rename the file or give it a front matter 'name:'")
    triggers: tuple[Any, ...] = ()
    if meta.get("triggers") is not None:
        from technician_ops.runbook.triggers import check as check_triggers

        triggers = check_triggers(meta["triggers"], key_lines, params, out.error)
    steps, undos = _steps(body_text, meta, params, project_root, out, strict=strict)
    if out.errors:
        return None, out.items
    name = str(meta.get("name") or path.stem)
    runbook = Runbook(
        name=name,
        path=path,
        text=text,
        summary=str(meta.get("summary") or ""),
        hosts=meta.get("hosts"),
        params=params,
        secrets=secrets,
        lock=str(meta.get("lock") or name),
        schedule=str(schedule) if schedule is not None else None,
        timeout=timeout,
        steps=tuple(steps),
        undos=undos,
        meta=meta,
        warnings=tuple(d for d in out.items if d.severity == "warning"),
        triggers=triggers,
    )
    return runbook, out.items


def _guess_root(path: Path) -> Path:
    path = path.resolve()
    return path.parent.parent if path.parent.name == "runbooks" else path.parent


def _display_path(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _front_matter(text: str, out: _Collector, *, strict: bool = False) -> tuple[dict[str, Any] | None, dict[str, int], str]:
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        out.error(1, "missing YAML front matter: the runbook must start with a '---' line")
        return None, {}, text
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
    if end is None:
        out.error(1, "front matter is not closed: add a '---' line after it")
        return None, {}, text
    fm = "\n".join(lines[1:end])
    try:
        node = yamlio.compose(fm)
        meta = yamlio.load(fm)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "malformed YAML"
        out.error(2 + (mark.line if mark else 0), f"malformed front matter YAML: {problem}")
        return None, {}, text
    except RecursionError:
        out.error(2, "front matter YAML is nested too deeply")
        return None, {}, text
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        out.error(2, "front matter must be a YAML mapping of keys")
        return None, {}, text
    key_lines = _node_key_lines(node, 2)
    for key in meta:
        if key not in FRONT_MATTER_KEYS:  # a Hugo/MkDocs/Runme key ("title", "weight", "runme"), or a typo
            close = [] if key in FOREIGN_FRONT_MATTER else difflib.get_close_matches(str(key), FRONT_MATTER_KEYS, n=1, cutoff=0.75)
            (out.error if strict else out.warn)(key_lines.get(key, 2), f"unknown front matter key {key!r} is ignored"
                     + (f": did you mean {close[0]!r}?" if close else f" (technician-ops reads: {', '.join(sorted(FRONT_MATTER_KEYS))})"))
    # Blank out the front matter so Markdown line numbers are file line numbers.
    body = "\n" * (end + 1) + "\n".join(lines[end + 1 :])
    return meta, key_lines, body


def _node_key_lines(node: Any, base: int, prefix: str = "") -> dict[str, int]:
    """Map ``key`` and ``key.sub`` to 1-based file lines; under ``triggers``, list items by index
    (``triggers.0.alertmanager.params.NAME``)."""
    found: dict[str, int] = {}
    deep = prefix.startswith("triggers.")
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            found[key] = base + key_node.start_mark.line
            if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)) and (
                    prefix.count(".") < 2 or (deep and prefix.count(".") < 5)):
                found.update(_node_key_lines(value_node, base, key + "."))
    elif isinstance(node, yaml.SequenceNode) and prefix == "triggers.":
        for i, item in enumerate(node.value):
            found[f"{prefix}{i}"] = base + item.start_mark.line
            found.update(_node_key_lines(item, base, f"{prefix}{i}."))
    return found


# Environment variables a parameter must never replace in a shell step (it gets $NAME, upper-cased).
_RESERVED_ENV = frozenset("""PATH HOME USER LOGNAME SHELL PWD OLDPWD IFS ENV BASH_ENV CDPATH TMPDIR TEMP TMP TERM LANG
    LANGUAGE TZ MAIL HOSTNAME PS1 PS2 PS3 PS4 SHELLOPTS BASHOPTS GLOBIGNORE PROMPT_COMMAND HISTFILE PAGER EDITOR
    VISUAL UID EUID PPID RANDOM SECONDS LINENO OPTIND OPTARG""".split())
_RESERVED_PREFIXES = ("LD_", "LC_", "PYTHON", "ANSIBLE_", "TECHNICIAN_OPS_", "SSH_", "BASH_", "DYLD_", "SUDO_",
                      "GIT_", "VAULT_", "XDG_")


def reserved_env_name(name: str) -> str | None:
    """What a parameter called ``name`` would clobber as a shell step's environment variable, or None."""
    from technician_ops.steps.shell import env_name

    var = env_name(name)
    if var in _RESERVED_ENV:
        return f"${var}"
    prefix = next((p for p in _RESERVED_PREFIXES if var.startswith(p)), None)
    return f"the {prefix}* variables (${var})" if prefix else None


def _params(meta: dict[str, Any], lines: dict[str, int], out: _Collector) -> dict[str, Param]:
    raw = meta.get("params") or {}
    if not isinstance(raw, dict):
        out.error(lines.get("params", 2), "'params' must be a mapping of parameter name to its declaration")
        return {}
    params: dict[str, Param] = {}
    for name, decl in raw.items():
        line = lines.get(f"params.{name}", lines.get("params", 2))
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            out.error(line, f"invalid parameter name {name!r}: use letters, digits and _")
            continue
        reserved = reserved_env_name(name)
        if reserved:
            out.error(line, f"parameter name {name!r} is reserved: shell steps get it as ${name.upper()}, "
                      f"which would replace {reserved} in every step's environment; choose another name")
            continue
        if decl is None:
            decl = {}
        if not isinstance(decl, dict):
            out.error(line, f"parameter {name!r} must be a mapping like {{type: string}}")
            continue
        for key in decl:
            if key not in PARAM_KEYS:
                out.error(lines.get(f"params.{name}.{key}", line), f"unknown key {key!r} in parameter {name!r} (allowed: {', '.join(sorted(PARAM_KEYS))})")
        ptype = str(decl.get("type", "string"))
        if ptype not in TYPES:
            out.error(lines.get(f"params.{name}.type", line), f"parameter {name!r} has unknown type {ptype!r} (known: {', '.join(TYPES)})")
            continue
        required = bool(decl.get("required", False))
        if required and "default" in decl:
            out.error(lines.get(f"params.{name}.default", line), f"parameter {name!r} is required and has a default: drop one")
        choices = decl.get("choices") or ()
        if ptype == "choice" and (not isinstance(choices, list) or not choices):
            out.error(line, f"parameter {name!r} of type choice needs a non-empty 'choices' list")
            continue
        param = Param(name, ptype, line, required, decl.get("default"), str(decl.get("help") or ""), tuple(str(c) for c in choices))
        if param.default is not None:
            try:
                coerce(param, param.default)
            except ParameterError as exc:
                out.error(lines.get(f"params.{name}.default", line), f"bad default: {exc.message}")
        params[name] = param
    return params


def _secrets(meta: dict[str, Any], lines: dict[str, int], params: dict[str, Param], out: _Collector) -> tuple[str, ...]:
    raw = meta.get("secrets")
    if raw is None:
        return ()
    line = lines.get("secrets", 2)
    if isinstance(raw, list):
        names = raw
    elif isinstance(raw, dict):
        names = list(raw)  # name -> source reference (e.g. vault:...)
    else:
        out.error(line, "'secrets' must be a list of parameter names (or a mapping name -> source)")
        return ()
    for name in names:
        if not isinstance(name, str):
            out.error(line, f"secret name {name!r} must be a string")
        elif isinstance(raw, list) and name not in params:
            out.error(line, f"secret {name!r} is not a declared parameter")
    return tuple(str(n) for n in names)


def _steps(
    body: str, meta: dict[str, Any], params: dict[str, Param], root: Path, out: _Collector, *, strict: bool
) -> tuple[list[Step], dict[str, Step]]:
    steps: list[Step] = []
    undo_blocks: list[Step] = []
    names: dict[str, int] = {}
    registry = kinds.registry()
    known_names = set(params) | set(meta.get("vars") or {}) | set(meta.get("secrets") or [])
    for fence in fences(body):
        line = fence.line + 1
        try:
            lang, block = split_info(fence.info)
            if block is None:
                continue  # documentation, never runs
            attrs = parse_attrs(block)
        except AttrError as exc:
            out.error(line, f"malformed attribute block: {exc}")
            continue
        runme = {k: attrs.pop(k) for k in list(attrs) if k in RUNME_ATTRS}
        skipped = [k for k in _RUNME_NOT_A_STEP if runme.get(k, "").lower() == "true"]
        if skipped:
            out.warn(line, f"Runme cell with {skipped[0]}=true is documentation here, not a step")
            continue
        if set(runme) - {"id"}:
            out.warn(line, f"Runme attribute(s) ignored: {', '.join(sorted(set(runme) - {'id'}))} "
                     "(a step runs unattended, in a shell of its own)")
        undo_of = attrs.get("rollback")
        kind_name = attrs.get("kind") or kinds.default_for_language(lang)
        if kind_name is None and runme and set(attrs) <= {"name"}:
            out.warn(line, f"Runme cell in {lang or 'no language'!r} is not a step (steps: "
                     f"{', '.join(sorted(kinds.languages()))}, or add kind=...)")
            continue
        if kind_name is None:
            out.error(line, f"cannot tell the step kind from language {lang or '(none)'!r}: add kind=... (known: {', '.join(sorted(registry))})")
            continue
        kind = registry.get(kind_name)
        if kind is None:
            out.error(line, f"unknown step kind {kind_name!r} (known: {', '.join(sorted(registry))})")
            continue
        allowed = COMMON_ATTRS | kind.extra_attrs
        for key in attrs:
            if key not in allowed:
                out.error(line, f"unknown attribute {key!r} (allowed: {', '.join(sorted(allowed))})")
        if undo_of is not None:
            name = attrs.get("name") or f"undo-{undo_of}"
        else:
            name = attrs.get("name") or f"step-{len(steps) + 1}"
            if not _NAME.match(name):
                out.error(line, f"invalid step name {name!r}: use letters, digits, '.', '_' and '-'")
            elif name in names:
                out.error(line, f"duplicate step name {name!r} (first used at line {names[name]})")
            else:
                names[name] = line
        _check_attr_values(attrs, line, known_names, out)
        content = _without_prompts(fence.content) if runme and lang in _SHELLS else fence.content
        try:
            spec = kind.parse(content, lang, root)
        except Exception as exc:  # BodyError, or a kind's own ValueError
            offset = getattr(exc, "offset", 0)
            out.error(fence.line + 2 + offset, str(getattr(exc, "message", exc)))
            continue
        step = Step(name, kind_name, lang, attrs, content, line, fence.line + 2, spec, undo_of)
        if undo_of is not None:
            undo_blocks.append(step)
        else:
            if not (attrs.get("hosts") or meta.get("hosts") or kind.controller or kind.own_hosts):
                out.error(line, f"step {name!r} has no hosts: add hosts=PATTERN or a front matter 'hosts:'")
            steps.append(step)
    undos: dict[str, Step] = {}
    for undo in undo_blocks:
        target = undo.undo_of or ""
        if target not in names:
            out.error(undo.line, f"rollback block names no step {target!r}" + (f" (steps: {', '.join(names)})" if names else ""))
        elif target in undos:
            out.error(undo.line, f"step {target!r} already has a rollback block at line {undos[target].line}")
        else:
            undos[target] = undo
    if not steps and not out.errors:
        out.error(1, "no steps: a step is a fenced code block with an attribute block, e.g. ```yaml {name=restart}")
    _check_step_refs(steps, undos, out)
    backups = {s.name: i for i, s in enumerate(steps) if registry[s.kind].auto_undo}
    for i, step in enumerate(steps):
        kind = registry[step.kind]
        declared = step.attrs.get("undo")
        if declared is not None:
            _check_declared_undo(step, i, declared, backups, step.name in undos, out)
            continue
        if step.name in undos or kind.has_auto_undo(step) or not kind.changes_things(step):
            continue
        if not kind.expects_undo:
            continue  # e.g. a playbook: its contents are opaque, its undo is the author's call
        message = (f"step {step.name!r} changes things but has no undo: add a ```{step.lang or 'yaml'} "
                   f"{{rollback={step.name}}} block, or declare undo=none (nothing to undo) or undo=backup:STEP "
                   "(an earlier backup step restores what it changes)")
        (out.error if strict else out.warn)(step.line, message)
    return steps, undos


def _check_step_refs(steps: list[Step], undos: dict[str, Step], out: _Collector) -> None:
    """``steps.NAME`` (and a script's ``$STEP_NAME_*``) name a step that ran before (docs/outputs.md)."""
    order = [s.name for s in steps]
    for i, step in enumerate(steps):
        _check_refs_of(step, order[:i], order, out)
        undo = undos.get(step.name)
        if undo is not None and (jinja_refs(undo.body) or jinja_refs(undo.attrs.get("when", ""))
                                 or (undo.lang in _SHELLS and env_mentions(undo.body))):
            out.error(undo.line, f"undo of {step.name!r} reads a step's output: an undo runs in an execution of "
                      "its own (for rollback RUN_ID, days later), where no step's output exists; make it stand alone")


def _check_refs_of(step: Step, earlier: list[str], every: list[str], out: _Collector) -> None:
    def bad(name: str, line: int) -> None:
        if name in every:
            out.error(line, f"step {step.name!r} reads steps.{name}, which runs after it: only an earlier step's "
                      "output exists")
            return
        close = difflib.get_close_matches(name, earlier, n=1)
        out.error(line, f"steps.{name}: no step {name!r} runs before {step.name!r}"
                  + (f": did you mean {close[0]!r}?" if close else f" (earlier steps: {', '.join(earlier) or 'none'})"))

    if jinja_refs(step.attrs.get("hosts", "")):
        out.error(step.line, f"step {step.name!r}: hosts= cannot read a step's output: hosts are resolved before "
                  "the run (preflight, the record); choose per host with when=")
    for name in jinja_refs(step.attrs.get("when", "")):
        if name not in earlier:
            bad(name, step.line)
    for name in jinja_refs(step.body):
        if name not in earlier:
            bad(name, step.body_line + step.body[: step.body.find(name)].count("\n"))
    if step.lang in _SHELLS:
        known = {env_name(n, "").rstrip("_").removeprefix("STEP_"): n for n in earlier}
        for prefix in env_mentions(step.body):
            if prefix not in known:
                line = step.body_line + step.body[: step.body.find(f"STEP_{prefix}_")].count("\n")
                out.error(line, f"${{STEP_{prefix}_...}}: no earlier step is called that "
                          f"(earlier steps: {', '.join(earlier) or 'none'}; a name's letters upper-cased, others _)")


def _check_declared_undo(step: Step, index: int, declared: str, backups: dict[str, int], has_block: bool,
                         out: _Collector) -> None:
    """``undo=none`` or ``undo=backup:STEP`` (an earlier step whose kind restores on its own, e.g. a backup)."""
    if has_block:
        out.error(step.line, f"step {step.name!r} has both undo={declared} and a rollback block: keep one")
    elif declared.startswith("backup:"):
        name = declared.split(":", 1)[1]
        if backups.get(name, index) >= index:
            earlier = [n for n, i in backups.items() if i < index]
            out.error(step.line, f"undo={declared}: no earlier backup step named {name!r}"
                      + (f" (earlier backups: {', '.join(earlier)})" if earlier else " (there is no earlier backup step)"))
    elif declared != "none":
        out.error(step.line, f"undo={declared!r}: say undo=none (nothing to undo) or undo=backup:STEP")


def _check_attr_values(attrs: dict[str, str], line: int, known: set[str], out: _Collector) -> None:
    for key in ("serial", "retries", "delay", "max_fail_percentage"):
        if key in attrs:
            value = attrs[key]
            ok = value.isdigit() or (key == "serial" and value.endswith("%") and value[:-1].isdigit())
            if not ok or (key == "max_fail_percentage" and value.isdigit() and int(value) > 100):
                out.error(line, f"attribute {key}={value!r} must be a whole number" + (" or a percentage" if key == "serial" else ""))
    if "timeout" in attrs:
        try:
            parse_duration(attrs["timeout"])
        except ValueError as exc:
            out.error(line, f"attribute timeout: {exc}")
    for key in ("continue_on_error", "become", "facts"):
        if key in attrs and attrs[key].lower() not in ("true", "false", "yes", "no"):
            out.error(line, f"attribute {key} must be true or false, got {attrs[key]!r}")
    if "hosts" in attrs and "{" in attrs["hosts"]:
        from jinja2 import TemplateSyntaxError, meta as jmeta
        from jinja2.sandbox import SandboxedEnvironment

        try:
            ast = SandboxedEnvironment().parse(attrs["hosts"])
        except TemplateSyntaxError as exc:
            out.error(line, f"attribute hosts: template error: {exc.message}")
            return
        for name in sorted(jmeta.find_undeclared_variables(ast) - known):
            out.error(line, f"attribute hosts uses undefined name {name!r} (declare it under params)")
