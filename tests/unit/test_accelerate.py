"""accelerate.check: mitogen is used only when it says it supports the installed ansible-core."""

from __future__ import annotations

from importlib import machinery, metadata
from pathlib import Path

import pytest

from technician_ops.engine import accelerate


def _fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mitogen: str | None, core: str, loaders: str = "") -> None:
    versions = {"ansible-core": core, **({"mitogen": mitogen} if mitogen else {})}

    def version(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    pkg = tmp_path / "ansible_mitogen"
    (pkg / "plugins" / "strategy").mkdir(parents=True)
    (pkg / "plugins" / "strategy" / "mitogen_linear.py").write_text("")
    (pkg / "loaders.py").write_text(loaders)
    spec = machinery.ModuleSpec("ansible_mitogen", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setattr(accelerate.util, "find_spec", lambda name: spec if mitogen else None)


@pytest.mark.parametrize("mitogen, core, loaders, usable, reason", [
    ("0.3.54", "2.19.14", "ANSIBLE_VERSION_MIN = (2, 10)\n", True, ""),
    ("0.3.9", "2.19.14", "ANSIBLE_VERSION_MAX = (2, 17)\n", False, "supports ansible-core up to 2.17, this is 2.19.14"),
    ("0.3.22", "2.19.1", "", False, "older than 0.3.29, the first release for ansible-core 2.19"),
    ("0.3.22", "2.17.3", "ANSIBLE_VERSION_MAX = (2, 17)\n", True, ""),
    (None, "2.19.14", "", False, "mitogen is not installed"),
])
def test_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mitogen: str | None, core: str, loaders: str,
               usable: bool, reason: str) -> None:
    _fake(monkeypatch, tmp_path, mitogen, core, loaders)
    found = accelerate.check()
    assert found.usable is usable and reason in found.reason
    assert (found.strategy_plugins == tmp_path / "ansible_mitogen" / "plugins" / "strategy") is usable


@pytest.mark.parametrize("flag, env, want", [(True, "", True), (False, "1", False), (None, "yes", True), (None, "", False)])
def test_flag_then_environment(flag: bool | None, env: str, want: bool) -> None:
    assert accelerate.wanted(flag, {accelerate.ENV: env}) is want
