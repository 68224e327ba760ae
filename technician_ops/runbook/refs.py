"""References from one step to what an earlier step printed: ``steps.NAME.stdout`` and friends.

A step publishes, per host, what its last task returned::

    steps.NAME.stdout        steps.NAME.stdout_lines    steps.NAME.stderr
    steps.NAME.rc            steps.NAME.json            (stdout parsed, when it is JSON)
    steps.NAME.skipped       steps.NAME.failed          steps.NAME.changed

readable in a YAML body and in ``when=`` as Jinja (``steps['disk-check']`` for
a name with ``-`` or ``.``), and in a shell script as environment variables
``$STEP_<NAME>_STDOUT``, ``$STEP_<NAME>_STDERR``, ``$STEP_<NAME>_RC`` (the
name upper-cased, every other character ``_``).  Only steps something refers
to publish anything.  A value is data: Ansible never templates it again, and a
script gets it in its environment, never in its text.
"""

from __future__ import annotations

import re

FIELDS = ("stdout", "stdout_lines", "stderr", "rc", "json", "skipped", "failed", "changed")
ENV_FIELDS = ("stdout", "stderr", "rc")
_JINJA = re.compile(r"""\bsteps\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(['"])([^'"\]]+)\2\s*\])""")
_ENV = re.compile(r"\$\{?STEP_([A-Z0-9_]+?)_(STDOUT|STDERR|RC)\b")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def jinja_refs(text: str) -> list[str]:
    """Step names ``text`` reads as ``steps.NAME`` or ``steps['NAME']``, in order of appearance."""
    return list(dict.fromkeys(m.group(1) or m.group(3) for m in _JINJA.finditer(text)))


def env_name(step: str, field: str) -> str:
    """The environment variable a script reads ``field`` of ``step`` from."""
    return f"STEP_{_NOT_ALNUM.sub('_', step).upper()}_{field.upper()}"


def env_refs(script: str, names: list[str]) -> list[str]:
    """Of the steps ``names``, those whose ``$STEP_<NAME>_...`` variables ``script`` reads."""
    wanted = {m.group(1) for m in _ENV.finditer(script)}
    return [n for n in names if _NOT_ALNUM.sub("_", n).upper() in wanted]


def env_mentions(script: str) -> list[str]:
    """Every ``STEP_<X>`` prefix ``script`` reads (to name the unknown ones)."""
    return list(dict.fromkeys(m.group(1) for m in _ENV.finditer(script)))
