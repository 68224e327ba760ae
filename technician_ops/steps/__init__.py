"""Registry of step kinds.

Every module in this package that defines ``KIND`` (a StepKind instance) is a
kind; discovery is by listing the package, so a new kind touches no other file.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

from technician_ops.steps.base import StepKind


_NOT_KINDS = frozenset({"base", "action"})  # what a kind is; the action plugins' preamble (imports ansible)


@lru_cache(maxsize=1)
def registry() -> dict[str, StepKind]:
    kinds: dict[str, StepKind] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_KINDS:
            continue
        # A kind is a module (``shell.py``) or a package whose ``kind`` module
        # is the cheap part (``vault/kind.py``; its run-time code loads lazily).
        module = importlib.import_module(f"{__name__}.{info.name}" + (".kind" if info.ispkg else ""))
        kind = getattr(module, "KIND", None)
        if isinstance(kind, StepKind):
            if kind.name in kinds:
                raise RuntimeError(f"two step kinds are named {kind.name!r}")
            kinds[kind.name] = kind
    return kinds


def get(name: str) -> StepKind | None:
    return registry().get(name)


def default_for_language(lang: str) -> str | None:
    for kind in registry().values():
        if lang in kind.languages:
            return kind.name
    return None


def languages() -> set[str]:
    """Every fence language some kind runs by default."""
    return {lang for kind in registry().values() for lang in kind.languages}


def action_dirs() -> list[Path]:
    """The ``action/`` directory of every kind that ships Ansible action plugins of its own."""
    root = Path(__file__).parent
    return sorted(d for d in root.glob("*/action") if d.is_dir())
