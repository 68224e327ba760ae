"""The project a command works on, and its configuration.

Precedence, lowest first: built-in defaults < ``[tool.technician-ops]`` in
pyproject.toml (or technician-ops.toml) < environment < CLI flags.  Runbook
front matter then applies per run.  ``Project.sources`` says where each
value came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from technician_ops.errors import ConfigError

ENV = {
    "inventory": "TECHNICIAN_OPS_INVENTORY",
    "audit_url": "TECHNICIAN_OPS_AUDIT_URL",
    "state_dir": "TECHNICIAN_OPS_STATE_DIR",
    "controller_name": "TECHNICIAN_OPS_CONTROLLER",
}
KEYS = {"inventory", "audit_url", "state_dir", "forks", "keep_backups", "controller_name"}
# A controller's name is shown by ``history`` and kept in every record: a short label, never markup or escapes.
CONTROLLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")


@dataclass(frozen=True)
class Project:
    root: Path
    inventory: tuple[Path, ...]
    state_dir: Path
    audit_url: str | None = None
    forks: int | None = None
    keep_backups: int = 10
    controller_name: str | None = None  # who ran a run, in a team's shared store (default: the host name)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def runbooks_dir(self) -> Path:
        return self.root / "runbooks"


def find_root(start: Path | None = None) -> Path:
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "runbooks").is_dir() or (d / "technician-ops.toml").is_file():
            return d
    return start


def _file_config(root: Path) -> tuple[dict[str, Any], str]:
    own = root / "technician-ops.toml"
    pyproject = root / "pyproject.toml"
    if not own.is_file() and not pyproject.is_file():
        return {}, ""
    import tomllib  # ~3 ms: only when there is a file to read

    if own.is_file():
        try:
            return tomllib.loads(own.read_text()), str(own)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{own}: {exc}") from None
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{pyproject}: {exc}") from None
        return data.get("tool", {}).get("technician-ops", {}), f"{pyproject} [tool.technician-ops]"
    return {}, ""


def load_project(root: Path | None = None, *, inventory: tuple[str, ...] = (), audit_url: str | None = None,
                 environ: dict[str, str] | None = None) -> Project:
    env = os.environ if environ is None else environ
    if root is None and env.get("TECHNICIAN_OPS_PROJECT"):
        root = Path(env["TECHNICIAN_OPS_PROJECT"])
    root = (root or find_root()).resolve()
    values: dict[str, Any] = {"inventory": None, "audit_url": None, "state_dir": ".technician-ops", "forks": None, "keep_backups": 10,
                              "controller_name": None}
    sources = {k: "default" for k in values}
    config, where = _file_config(root)
    for key, value in config.items():
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(KEYS))})")
        values[key], sources[key] = value, where
    for key, var in ENV.items():
        if env.get(var):
            values[key], sources[key] = env[var], f"${var}"
    if inventory:
        values["inventory"], sources["inventory"] = list(inventory), "--inventory"
    if audit_url:
        values["audit_url"], sources["audit_url"] = audit_url, "--audit-url"
    inv = values["inventory"]
    if inv is None:
        default = root / "inventory"
        inv_paths: tuple[Path, ...] = (default,) if default.exists() else ()
    else:
        items = inv if isinstance(inv, list) else str(inv).split(os.pathsep)
        inv_paths = tuple((Path(p) if Path(p).is_absolute() else (Path.cwd() / p if sources["inventory"] == "--inventory" else root / p)).resolve() for p in items)
    state = Path(values["state_dir"])
    state = state if state.is_absolute() else root / state
    return Project(root, inv_paths, state, values["audit_url"] or None,
                   int(values["forks"]) if values["forks"] else None, int(values["keep_backups"]),
                   _controller_name(values["controller_name"], sources["controller_name"]), sources)


def _controller_name(value: Any, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not CONTROLLER_NAME.fullmatch(value):
        raise ConfigError(f"{source}: controller_name {str(value)[:80]!r} is not a valid name",
                          hint="1-64 characters: letters, digits and . _ @ : - (starting with a letter or digit)")
    return value


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
