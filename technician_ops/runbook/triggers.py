"""``triggers:``: which alerts may start a runbook, and what of an alert becomes the run's input.

    triggers:
      - alertmanager:
          match: {alertname: NodeFilesystemSpaceFillingUp}
          params: {mountpoint: "{{ labels.mountpoint }}"}
          hosts: "{{ labels.instance | host }}"

An alert matches a trigger when every ``match`` label has exactly that value.
Only the labels a trigger's templates read become values: the rest of the
alert never reaches the run.  A template is text with ``{{ }}`` expressions
over ``labels.NAME`` (or ``labels['NAME']``), ``~`` and a few filters, and
nothing else: no statements, no other names, no calls.  It renders in
jinja2's SandboxedEnvironment with StrictUndefined, so a label the alert lacks
is an error, never an empty string.  A rendered value is data: it goes to the
run as ``-p NAME=VALUE`` is bound (typed by the runbook's ``params``), and
``hosts`` becomes the run's ``--limit``, which must be one inventory host name.

Checking (``check``) is the loader's, with ``path:line`` diagnostics; matching
and rendering (``matches``, ``render``) are the server's.  jinja2 is imported
only when a runbook has triggers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from technician_ops.errors import ParameterError
from technician_ops.runbook.model import Param, Trigger

SOURCES = ("alertmanager",)
SPEC_KEYS = ("match", "params", "hosts")
FILTERS = ("host", "lower", "upper", "trim", "replace", "default")
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# One inventory host name, nothing Ansible would read as a pattern (`,` `:` `!` `&` `*` `?` `~` `[`).
HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
MAX_VALUE = 4096  # characters of one rendered value

Error = Callable[[int, str], None]


def check(raw: Any, lines: Mapping[str, int], params: Mapping[str, Param], error: Error) -> tuple[Trigger, ...]:
    """The runbook's triggers from its front matter ``triggers:``; every problem goes to ``error(line, message)``.

    ``lines``: the front matter's ``key.sub`` -> file line map (list items by index: ``triggers.0.alertmanager``).
    """
    if raw is None:
        return ()
    top = lines.get("triggers", 2)
    if not isinstance(raw, list):
        error(top, "'triggers' must be a list, e.g. - alertmanager: {match: {alertname: NAME}}")
        return ()
    out: list[Trigger] = []
    for i, item in enumerate(raw):
        where = f"triggers.{i}"
        line = lines.get(where, top)
        if not isinstance(item, dict) or len(item) != 1:
            error(line, f"trigger {i + 1} must be a mapping with one key, its source ({', '.join(SOURCES)})")
            continue
        source, spec = next(iter(item.items()))
        if source not in SOURCES:
            error(line, f"trigger {i + 1}: unknown source {source!r} (known: {', '.join(SOURCES)})")
            continue
        where += f".{source}"
        line = lines.get(where, line)
        if not isinstance(spec, dict):
            error(line, f"trigger {i + 1}: {source} must be a mapping with {', '.join(SPEC_KEYS)}")
            continue
        trigger = _check_one(i, spec, where, line, lines, params, error)
        if trigger is not None:
            out.append(trigger)
    return tuple(out)


def _check_one(i: int, spec: dict[Any, Any], where: str, line: int, lines: Mapping[str, int],
               params: Mapping[str, Param], error: Error) -> Trigger | None:
    ok = True
    what = f"trigger {i + 1}"
    for key in spec:
        if key not in SPEC_KEYS:
            error(lines.get(f"{where}.{key}", line), f"{what}: unknown key {key!r} (allowed: {', '.join(SPEC_KEYS)})")
            ok = False
    match = spec.get("match")
    match_line = lines.get(f"{where}.match", line)
    if not isinstance(match, dict) or not match:
        error(match_line, f"{what}: 'match' must be a non-empty mapping of label name to value, "
                          "e.g. {alertname: NodeFilesystemSpaceFillingUp}")
        ok = False
        match = {}
    for name, value in match.items():
        if not isinstance(name, str) or not LABEL_NAME.fullmatch(name):
            error(match_line, f"{what}: match: {name!r} is not a label name (letters, digits, _)")
            ok = False
        elif not isinstance(value, str):
            error(lines.get(f"{where}.match.{name}", match_line),
                  f"{what}: match: label {name!r} must be matched by a string, got {value!r} (quote it)")
            ok = False
    templates: dict[str, str] = {}
    raw_params = spec.get("params", {})
    params_line = lines.get(f"{where}.params", line)
    if not isinstance(raw_params, dict):
        error(params_line, f"{what}: 'params' must be a mapping of parameter name to template")
        ok, raw_params = False, {}
    for name, text in raw_params.items():
        at = lines.get(f"{where}.params.{name}", params_line)
        param = params.get(name) if isinstance(name, str) else None
        if param is None:
            error(at, f"{what}: params: {name!r} is not a declared parameter (this runbook takes: "
                      f"{', '.join(sorted(params)) or 'none'})")
            ok = False
        elif param.secret:
            error(at, f"{what}: params: {name!r} is a secret parameter; an alert's label is not a secret "
                      "(it is in Alertmanager, its notifications and the record)")
            ok = False
        elif not isinstance(text, str):
            error(at, f"{what}: params: {name!r} must be a template string, got {text!r} (quote it)")
            ok = False
        else:
            templates[name] = text
    hosts = spec.get("hosts")
    hosts_line = lines.get(f"{where}.hosts", line)
    if hosts is not None and not isinstance(hosts, str):
        error(hosts_line, f"{what}: 'hosts' must be a template string naming one host, e.g. "
                          "\"{{ labels.instance | host }}\"")
        ok, hosts = False, None
    read: dict[str, None] = {}
    for label, (text, at) in {**{f"params.{n}": (t, lines.get(f"{where}.params.{n}", params_line))
                                 for n, t in templates.items()},
                              **({"hosts": (hosts, hosts_line)} if hosts is not None else {})}.items():
        problem, names = template_problem(text)
        if problem:
            error(at, f"{what}: {label}: {problem}")
            ok = False
        read.update(dict.fromkeys(names))
    missing = sorted(n for n, p in params.items() if p.required and p.default is None and n not in templates)
    if missing:
        error(line, f"{what}: required parameter(s) {', '.join(missing)} get no value: an alert's run has nobody "
                    "to pass them; give each a template under params (or a default)")
        ok = False
    if not ok:
        return None
    return Trigger("alertmanager", {str(k): str(v) for k, v in match.items()}, templates, hosts, line, tuple(read))


# -- templates --------------------------------------------------------------------------------


def template_problem(text: str) -> tuple[str | None, list[str]]:
    """(what is wrong with a trigger template, or None; the label names it reads, in order)."""
    from jinja2 import TemplateSyntaxError

    try:
        ast = _environment().parse(text)
    except TemplateSyntaxError as exc:
        return f"template syntax error: {exc.message}", []
    names: list[str] = []
    problem = _walk(ast, names)
    return problem, list(dict.fromkeys(names))


def _walk(node: Any, names: list[str]) -> str | None:
    from jinja2 import nodes

    allowed = ("labels.NAME (or labels['NAME']), text, '~' and the filters " + ", ".join(FILTERS))
    if isinstance(node, nodes.Template):
        return _first(node.body, names)
    if isinstance(node, nodes.Output):
        return _first(node.nodes, names)
    if isinstance(node, nodes.TemplateData):
        return None
    if isinstance(node, nodes.Const):
        return None if isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool) else \
            f"only strings and numbers may be written in a template, not {node.value!r}"
    if isinstance(node, nodes.Getattr) and _is_labels(node.node):
        names.append(node.attr)
        return None
    if isinstance(node, nodes.Getitem) and _is_labels(node.node):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and LABEL_NAME.fullmatch(node.arg.value):
            names.append(node.arg.value)
            return None
        return "labels[...] takes a label name in quotes"
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        inner = node.node
        if isinstance(inner, nodes.Name) and inner.name != "labels":
            return _walk(inner, names)
        return "a label's value is text: read it whole, as labels.NAME"
    if isinstance(node, nodes.Name):
        if node.name == "labels":
            return "read one label at a time: labels.NAME"
        return f"{node.name!r} is not available: a trigger template reads only {allowed}"
    if isinstance(node, nodes.Concat):
        return _first(node.nodes, names)
    if isinstance(node, nodes.Filter):
        if node.name not in FILTERS:
            return f"filter {node.name!r} is not available (filters: {', '.join(FILTERS)})"
        if node.kwargs or node.dyn_args or node.dyn_kwargs:
            return f"filter {node.name!r}: give its arguments as plain values"
        for arg in node.args:
            if not isinstance(arg, nodes.Const):
                return f"filter {node.name!r}: its arguments must be plain strings or numbers"
        return _walk(node.node, names) if node.node is not None else f"filter {node.name!r} filters nothing"
    if isinstance(node, (nodes.If, nodes.For, nodes.Assign, nodes.AssignBlock, nodes.Macro, nodes.CallBlock,
                         nodes.FilterBlock, nodes.With, nodes.Block, nodes.Include, nodes.Import, nodes.FromImport,
                         nodes.Extends, nodes.ExprStmt, nodes.Scope)):
        return "statements ({% ... %}) are not available in a trigger template: only {{ expressions }}"
    return f"{type(node).__name__.lower()} expressions are not available: a trigger template reads only {allowed}"


def _first(items: list[Any], names: list[str]) -> str | None:
    for item in items:
        problem = _walk(item, names)
        if problem:
            return problem
    return None


def _is_labels(node: Any) -> bool:
    from jinja2 import nodes

    return isinstance(node, nodes.Name) and node.name == "labels" and node.ctx == "load"


def host(value: Any) -> str:
    """``instance`` without its ``:port``: ``web1:9100`` -> ``web1``, ``[2001:db8::1]:9100`` -> ``2001:db8::1``."""
    text = str(value)
    if text.startswith("["):
        end = text.find("]")
        if end > 0 and (end == len(text) - 1 or (text[end + 1] == ":" and text[end + 2:].isdigit())):
            return text[1:end]
        return text
    head, sep, port = text.rpartition(":")
    if sep and head and ":" not in head and port.isdigit():
        return head
    return text


@lru_cache(maxsize=1)
def _environment() -> Any:
    """The sandbox: StrictUndefined, no globals, no tests, only the filters of ``FILTERS``."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    builtin = dict(env.filters)
    env.filters = {name: builtin[name] for name in FILTERS if name in builtin}
    env.filters["host"] = host
    env.globals = {}
    env.tests = {}
    return env


@lru_cache(maxsize=256)
def _template(text: str) -> Any:
    return _environment().from_string(text)


# -- matching and rendering -------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """What an alert gives a run through one trigger."""

    params: dict[str, str]
    limit: str | None  # the one host the run is limited to (None: the runbook's own hosts)
    labels: dict[str, str]  # the labels that decided it: those matched and those read


def matches(trigger: Trigger, labels: Mapping[str, str]) -> bool:
    return all(labels.get(name) == value for name, value in trigger.match.items())


def render(trigger: Trigger, labels: Mapping[str, str]) -> Rendered:
    """The run's parameters and ``--limit`` from an alert's ``labels``; ``ParameterError`` saying why not.

    Only the labels the templates read are handed to them (plus nothing else), and each rendered value is
    checked: at most ``MAX_VALUE`` characters, no NUL; ``hosts`` one host name.
    """
    from jinja2 import TemplateError, UndefinedError

    read = {name: str(labels[name]) for name in trigger.labels if name in labels}
    values: dict[str, str] = {}
    targets = {**{f"params.{n}": t for n, t in trigger.params.items()},
               **({"hosts": trigger.hosts} if trigger.hosts is not None else {})}
    for what, text in targets.items():
        try:
            value = _template(text).render(labels=read)
        except UndefinedError:
            _, names = template_problem(text)
            absent = [n for n in names if n not in labels]
            raise ParameterError(f"the alert has no label {', '.join(repr(n) for n in absent) or '(unknown)'}, which "
                                 f"the trigger's {what} reads") from None
        except TemplateError as exc:
            raise ParameterError(f"the trigger's {what} could not be rendered: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:  # a filter called wrong
            raise ParameterError(f"the trigger's {what} could not be rendered: {type(exc).__name__}: {exc}") from None
        if len(value) > MAX_VALUE or "\0" in value:
            raise ParameterError(f"the trigger's {what} rendered a value longer than {MAX_VALUE} characters "
                                 "or holding a NUL: refused")
        values[what] = value
    limit = values.pop("hosts", None)
    if limit is not None and not HOST_NAME.fullmatch(limit):
        raise ParameterError(f"the trigger's hosts rendered {limit[:200]!r}, which is not one inventory host name")
    params = {name.removeprefix("params."): value for name, value in values.items()}
    decided = {**{n: labels[n] for n in trigger.match}, **read}
    return Rendered(params, limit, {n: str(decided[n]) for n in sorted(decided)})
