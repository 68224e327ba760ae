"""``--accelerate``: run the compiled playbook under mitogen's linear strategy.

Mitogen keeps one Python interpreter per host alive for the whole play and
sends modules to it over a pipe, instead of forking a worker and starting a
fresh interpreter per task and host: on local-connection hosts this ran the
bench at ~0.3x the time of the default strategy with identical ok/changed
counts (issue 9).

It is opt-in only, never a silent default: ansible-core 2.19 deprecates
strategy plugins outside ``ansible.builtin``, and mitogen follows Ansible
releases with a delay.  So before a run uses it, ``check`` makes sure mitogen
is installed and claims support for the installed ansible-core; when it does
not, the run goes on with Ansible's linear strategy and says so in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import util
from pathlib import Path

STRATEGY = "mitogen_linear"
# The first mitogen release known to run ansible-core 2.19 (the 12.x community package).
MIN_MITOGEN = {(2, 19): (0, 3, 29)}
ENV = "TECHNICIAN_OPS_ACCELERATE"


@dataclass(frozen=True)
class Acceleration:
    """The outcome of ``check``: usable (with the strategy plugin dir), or why not."""

    usable: bool
    strategy_plugins: Path | None = None
    reason: str = ""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check() -> Acceleration:
    """Whether mitogen can drive the installed ansible-core; never imports either."""
    from importlib import metadata  # ~16 ms: only when --accelerate asks

    try:
        core = _version(metadata.version("ansible-core"))
    except metadata.PackageNotFoundError:
        return Acceleration(False, reason="ansible-core is not installed")
    spec = util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        return Acceleration(False, reason="mitogen is not installed (pip install 'mitogen>=0.3.29')")
    try:
        mitogen = _version(metadata.version("mitogen"))
    except metadata.PackageNotFoundError:
        mitogen = ()
    package = Path(next(iter(spec.submodule_search_locations)))
    strategy_dir = package / "plugins" / "strategy"
    if not (strategy_dir / f"{STRATEGY}.py").is_file():
        return Acceleration(False, reason=f"mitogen at {package} has no {STRATEGY} strategy")
    # Older releases refuse Ansible newer than a hard-coded maximum; read it, do not import.
    loaders = package / "loaders.py"
    text = loaders.read_text(errors="replace") if loaders.is_file() else ""
    bound = re.search(r"ANSIBLE_VERSION_MAX\s*=\s*\((\d+),\s*(\d+)\)", text)
    shown = ".".join(map(str, mitogen)) or "unknown"
    if bound and core[:2] > (int(bound.group(1)), int(bound.group(2))):
        return Acceleration(False, reason=f"mitogen {shown} supports ansible-core up to "
                                          f"{bound.group(1)}.{bound.group(2)}, this is {'.'.join(map(str, core))}")
    need = max((v for k, v in MIN_MITOGEN.items() if core[:2] >= k), default=None)
    if need is not None and mitogen < need:
        return Acceleration(False, reason=f"mitogen {shown} is older than {'.'.join(map(str, need))}, "
                                          f"the first release for ansible-core {core[0]}.{core[1]}")
    return Acceleration(True, strategy_dir)


def wanted(flag: bool | None, environ: dict[str, str]) -> bool:
    """The flag when given, else ``TECHNICIAN_OPS_ACCELERATE`` (1/true/yes): how CI runs a suite under it."""
    if flag is not None:
        return flag
    return environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")
