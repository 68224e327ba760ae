"""The inventory cache: a run whose static inventory did not change answers without Ansible, and any
change to what decides the answers (inventory, group/host vars, config, environment) is seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from technician_ops.engine import inventory

REPO = Path(__file__).resolve().parents[2]

HOSTS = """\
all:
  children:
    web:
      hosts:
        w1: {ansible_connection: local}
        w2: {ansible_host: 10.0.0.2}
    db:
      hosts:
        d1: {ansible_connection: local, ansible_python_interpreter: /usr/bin/python3}
"""


@pytest.fixture(autouse=True)
def _no_ambient_ansible_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("ANSIBLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv(inventory.ENV_NO_CACHE, raising=False)


def _project(tmp_path: Path) -> tuple[Path, Path]:
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text(HOSTS)
    return inv, tmp_path / "state" / "cache"


def _ask(inv: Path, cache: Path, cwd: Path | None = None, **env: str) -> dict[str, Any]:
    """What a run asks, then saved, as ``api`` does: in a process of its own, as a run is.

    (In one process, Ansible's vars plugin remembers which group_vars/host_vars files it found.)
    Also reports whether the answers needed Ansible.
    """
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from technician_ops.engine import inventory\n"
        f"inv = inventory.load((Path({str(inv)!r}),), Path({str(cache)!r}))\n"
        "out = {'all': inv.all_hosts(), 'web': inv.hosts('web'), 'local_no_python': inv.local_hosts_without_python(),"
        " 'ssh': {h: inv.may_use_ssh(h) for h in inv.all_hosts()}}\n"
        "inv.save()\n"
        "out['ansible_imported'] = 'ansible.inventory.manager' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != inventory.ENV_NO_CACHE}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=cwd or inv.parent,
                          env={**base, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    answers: dict[str, Any] = json.loads(proc.stdout)
    return answers


EXPECTED = {"all": ["w1", "w2", "d1"], "web": ["w1", "w2"], "local_no_python": ["w1"],
            "ssh": {"w1": False, "w2": True, "d1": False}}


def test_a_cached_answer_equals_ansibles_and_needs_no_ansible_import(tmp_path: Path) -> None:
    inv, cache = _project(tmp_path)
    first = _ask(inv, cache)
    assert first.pop("ansible_imported") is True  # miss: Ansible answers and the cache is written
    assert first == EXPECTED
    assert (cache / inventory.CACHE_FILE).stat().st_mode & 0o077 == 0
    again = _ask(inv, cache)
    assert again.pop("ansible_imported") is False
    assert again == EXPECTED


@pytest.mark.parametrize("change", ["inventory", "host_vars", "group_vars", "config", "environment"])
def test_every_input_of_the_answers_invalidates_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          change: str) -> None:
    inv, cache = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    _ask(inv, cache)
    key = inventory.fingerprint((inv,))
    env: dict[str, str] = {}
    if change == "inventory":
        (inv / "hosts.yml").write_text(HOSTS.replace("w2: {ansible_host: 10.0.0.2}", "w2: {ansible_connection: local}"))
    elif change == "host_vars":
        (inv / "host_vars").mkdir()
        (inv / "host_vars" / "w2.yml").write_text("ansible_connection: local\n")
    elif change == "group_vars":
        (inv / "group_vars").mkdir()
        (inv / "group_vars" / "web.yml").write_text("ansible_connection: local\n")
    elif change == "config":
        (tmp_path / "ansible.cfg").write_text("[defaults]\nforks = 3\n")
    else:
        monkeypatch.setenv("ANSIBLE_INVENTORY_ENABLED", "yaml")
        env["ANSIBLE_INVENTORY_ENABLED"] = "yaml"
    assert inventory.fingerprint((inv,)) != key
    answers = _ask(inv, cache, tmp_path, **env)
    assert answers.pop("ansible_imported") is True
    if change in ("config", "environment"):
        assert answers == EXPECTED
    else:
        assert answers["local_no_python"] == ["w1", "w2"]
        assert answers["ssh"]["w2"] is False


def test_a_new_pattern_on_a_warm_cache_is_answered_and_kept(tmp_path: Path) -> None:
    inv, cache = _project(tmp_path)
    _ask(inv, cache)
    loaded = inventory.load((inv,), cache)
    assert loaded.hosts("web:&db") == []
    assert loaded.hosts("web:!w2") == ["w1"]
    loaded.save()
    body = json.loads((cache / inventory.CACHE_FILE).read_text())
    assert body["patterns"]["web:!w2"] == ["w1"]
    assert body["key"] == inventory.fingerprint((inv,))


def test_dynamic_inventories_are_never_cached(tmp_path: Path) -> None:
    script = tmp_path / "dyn"
    script.mkdir()
    (script / "hosts.py").write_text("#!/bin/sh\necho '{\"web\": {\"hosts\": [\"x1\"]}, \"_meta\": {\"hostvars\": {}}}'\n")
    (script / "hosts.py").chmod(0o755)
    plugin = tmp_path / "plug"
    plugin.mkdir()
    (plugin / "constructed.yml").write_text("plugin: ansible.builtin.constructed\n")
    for source in (script, plugin):
        assert inventory.fingerprint((source,)) is None
    cache = tmp_path / "cache"
    loaded = inventory.load((script,), cache)
    assert loaded.hosts("web") == ["x1"]
    loaded.save()
    assert not cache.exists()


def test_a_damaged_or_foreign_cache_is_ignored_and_rewritten(tmp_path: Path) -> None:
    inv, cache = _project(tmp_path)
    cache.mkdir(parents=True)
    (cache / inventory.CACHE_FILE).write_text("{not json")
    assert _ask(inv, cache)["all"] == EXPECTED["all"]
    body = json.loads((cache / inventory.CACHE_FILE).read_text())
    body["patterns"]["web"] = ["stale"]
    body["key"] = "0" * 64
    (cache / inventory.CACHE_FILE).write_text(json.dumps(body))
    assert _ask(inv, cache)["web"] == ["w1", "w2"]


def test_the_cache_can_be_turned_off_and_an_empty_inventory_is_not_kept(tmp_path: Path) -> None:
    inv, cache = _project(tmp_path)
    assert _ask(inv, cache, **{inventory.ENV_NO_CACHE: "0"})["all"] == EXPECTED["all"]
    assert not cache.exists()
    (inv / "hosts.yml").write_text("all: {}\n")
    assert _ask(inv, cache)["all"] == []
    assert not (cache / inventory.CACHE_FILE).exists()
