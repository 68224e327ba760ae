"""YAML of runbooks, parsed once per text with libyaml when it is installed.

Lint and load need both the data of a YAML text and its node tree (for the
line of each key or task).  Parsing twice with PyYAML's pure-Python scanner
was ~80 % of ``lint`` (issue 9).  Here a text is composed once, by libyaml's
C parser when PyYAML was built with it, the node tree is kept in a small
cache, and data is constructed from the nodes: the same resolver and
constructor as ``yaml.safe_load``, so values are identical.

Diagnostics must not depend on whether libyaml is present: libyaml words its
errors differently ("... in this context" vs "... here"), so when the C
parser fails the text is parsed again with the pure-Python loader and *its*
error is raised.  Errors are rare; their cost does not matter.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml

_FAST_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_with(loader_cls: type, text: str) -> yaml.Node | None:
    loader = loader_cls(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


@lru_cache(maxsize=512)
def compose(text: str) -> yaml.Node | None:
    """The node tree of ``text`` (None when empty); raises ``yaml.YAMLError`` as PyYAML words it.

    The returned tree is shared between callers: read it, never change it.
    """
    try:
        return _compose_with(_FAST_LOADER, text)
    except yaml.YAMLError:
        if _FAST_LOADER is yaml.SafeLoader:
            raise
        return _compose_with(yaml.SafeLoader, text)  # raises PyYAML's own error, or agrees it is valid


def load(text: str) -> Any:
    """``yaml.safe_load(text)``, from the cached node tree: a fresh object on every call."""
    node = compose(text)
    if node is None:
        return None
    try:
        return yaml.constructor.SafeConstructor().construct_document(node)
    except yaml.YAMLError:
        if _FAST_LOADER is yaml.SafeLoader:
            raise
        return yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader; raises PyYAML's error with its snippet


# -- writing YAML that Ansible reads ---------------------------------------------


class Unsafe(str):
    """A string Ansible must never template (dumped as ``!unsafe``)."""



class _Dumper(yaml.SafeDumper):
    pass


def _unsafe_representer(dumper: yaml.SafeDumper, data: Unsafe) -> yaml.Node:
    """``!unsafe`` only where it is needed, on text with a ``{`` (every Jinja delimiter starts with one).

    ansible-core 2.19 resolves the type of an ``!unsafe`` scalar again as if it were plain, quoted or
    not: ``!unsafe '1'`` loads as the int 1, ``!unsafe 'yes'`` as True.  A string without ``{`` cannot
    be a template, so it is written as a plain, quoted-where-needed YAML string and stays the text the
    operator typed; one with ``{`` is never resolved to anything but text.
    """
    style = "|" if "\n" in data else None
    if "{" not in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=style)
    return dumper.represent_scalar("!unsafe", str(data), style=style)


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(Unsafe, _unsafe_representer)
_Dumper.add_representer(str, _str_representer)
_Dumper.add_multi_representer(str, _str_representer)


def dump(data: Any) -> str:
    """YAML for Ansible to read: block scalars for multi-line text, ``Unsafe`` as ``!unsafe``."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
