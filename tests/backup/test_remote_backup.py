"""The host-side archive script, run for real (as the Ansible task will run it)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from technician_ops.steps.backup.store import REMOTE_SCRIPT, BackupCorrupted, interpret_remote_result


def run_script(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(REMOTE_SCRIPT), *args], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must bring back, per path below (and including) root."""
    if not os.path.lexists(root):
        return {}
    paths = [root]
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            paths += [Path(dirpath) / n for n in dirnames + filenames]
    out: dict[str, tuple[Any, ...]] = {}
    for p in paths:
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p), st.st_uid, st.st_gid)
            continue
        # tar keeps mtimes as PAX decimals: microsecond precision.
        mtime_us = round(st.st_mtime_ns / 1000)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode, st.st_uid, st.st_gid, mtime_us)
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[rel] = ("file", mode, st.st_uid, st.st_gid, mtime_us, digest, st.st_nlink)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    app = tmp_path / "srv" / "app"
    (app / "conf.d").mkdir(parents=True)
    (app / "app.conf").write_text("listen 8080\n")
    (app / "secret.key").write_bytes(os.urandom(64))
    os.chmod(app / "secret.key", 0o600)
    (app / "conf.d" / "a.conf").write_text("a=1\n")
    (app / "conf.d" / "b.conf").write_text("b=1\n")
    (app / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(app / "run.sh", 0o4755)  # setuid kept too
    (app / "current").symlink_to("/etc/hostname")  # absolute symlink, never followed
    (app / "rel").symlink_to("conf.d/a.conf")
    os.link(app / "app.conf", app / "app.conf.hardlink")
    if os.geteuid() == 0:
        os.chown(app / "conf.d" / "b.conf", 4242, 4343)  # numeric ids without a passwd entry
    os.chmod(app / "conf.d", 0o750)
    for i, p in enumerate(sorted(app.rglob("*"))):
        if not p.is_symlink():
            os.utime(p, ns=(1_600_000_000_123_456_000 + i, 1_600_000_000_123_456_000 + i * 1000))
    os.utime(app, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    single = tmp_path / "etc" / "single.cfg"
    single.parent.mkdir()
    single.write_text("x=1\n")
    os.chmod(single, 0o640)
    absent = tmp_path / "var" / "new-during-run"
    (tmp_path / "var").mkdir()
    return {"app": app, "single": single, "absent": absent, "tmp": tmp_path}


def _create(tree: dict[str, Path]) -> tuple[Path, str]:
    archive = tree["tmp"] / "store" / "backup.tar"
    rc, result = run_script("create", "--out", str(archive), str(tree["app"]), str(tree["single"]), str(tree["absent"]))
    assert rc == 0, result
    assert result["ok"] and result["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert [r["existed"] for r in result["roots"]] == [True, True, False]
    return archive, result["sha256"]


def _mutate(tree: dict[str, Path]) -> None:
    app = tree["app"]
    (app / "app.conf").write_text("listen 9090\n")  # content (and the hard link's)
    os.chmod(app / "secret.key", 0o644)  # mode
    (app / "conf.d" / "c.conf").write_text("added by the run\n")  # added file
    (app / "new-dir" / "deep").mkdir(parents=True)  # added directory
    (app / "conf.d" / "a.conf").unlink()  # deleted file
    (app / "run.sh").unlink()
    (app / "run.sh").symlink_to("/bin/true")  # file replaced by a symlink
    (app / "current").unlink()
    (app / "current").write_text("symlink replaced by a file\n")
    tree["single"].write_text("x=2\n")
    tree["absent"].mkdir()
    (tree["absent"] / "file").write_text("created by the run\n")


def test_restore_brings_back_exactly_what_was_there(tree: dict[str, Path]) -> None:
    before_app, before_single = snapshot(tree["app"]), snapshot(tree["single"])
    archive, sha = _create(tree)
    _mutate(tree)
    assert snapshot(tree["app"]) != before_app

    rc, result = run_script("verify", "--archive", str(archive), "--sha256", sha)
    assert rc == 0 and result["ok"]

    rc, result = run_script("restore", "--archive", str(archive), "--sha256", sha)
    assert rc == 0, result
    assert [r["action"] for r in result["roots"]] == ["restored", "restored", "removed"]

    assert snapshot(tree["app"]) == before_app  # content, modes, owners, mtimes, links, no extras
    assert snapshot(tree["single"]) == before_single
    assert not os.path.lexists(tree["absent"])  # did not exist before: removed
    # No staging debris left beside the restored roots.
    leftovers = [p.name for d in (tree["app"].parent, tree["single"].parent) for p in d.iterdir()]
    assert not [n for n in leftovers if n.startswith(".techops-")]

    # Restoring twice is harmless (an undo may be retried).
    rc, result = run_script("restore", "--archive", str(archive), "--sha256", sha)
    assert rc == 0 and [r["action"] for r in result["roots"]] == ["restored", "restored", "absent"]
    assert snapshot(tree["app"]) == before_app


def test_restore_recreates_a_deleted_root(tree: dict[str, Path]) -> None:
    before = snapshot(tree["app"])
    archive, sha = _create(tree)
    import shutil

    shutil.rmtree(tree["app"].parent)
    rc, _ = run_script("restore", "--archive", str(archive), "--sha256", sha)
    assert rc == 0
    assert snapshot(tree["app"]) == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "wrong_sha"])
def test_corrupted_archive_is_refused_and_nothing_changes(tree: dict[str, Path], damage: str) -> None:
    archive, sha = _create(tree)
    _mutate(tree)
    mutated = snapshot(tree["app"]), snapshot(tree["single"]), snapshot(tree["absent"])
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x01
        archive.write_bytes(bytes(data))
    elif damage == "truncate":
        archive.write_bytes(bytes(data[: len(data) // 2]))
    else:
        sha = "0" * 64

    rc, result = run_script("restore", "--archive", str(archive), "--sha256", sha)
    assert rc == 3
    assert result["ok"] is False and result["integrity"] is True
    assert "corrupt or not the recorded backup" in result["error"]
    assert (snapshot(tree["app"]), snapshot(tree["single"]), snapshot(tree["absent"])) == mutated

    rc, _ = run_script("verify", "--archive", str(archive), "--sha256", sha)
    assert rc == 3
    with pytest.raises(BackupCorrupted, match="corrupt"):
        interpret_remote_result(rc, json.dumps(result), "web1")


def test_archive_with_foreign_member_is_refused(tmp_path: Path) -> None:
    import tarfile

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(REMOTE_SCRIPT, arcname="manifest.json")
        tar.add(REMOTE_SCRIPT, arcname="../escape")
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    rc, result = run_script("restore", "--archive", str(evil), "--sha256", sha)
    assert rc == 3 and not result["ok"]
    assert not (tmp_path.parent / "escape").exists()


def test_script_is_stdlib_only() -> None:
    """It runs on hosts with nothing but python3: no technician_ops imports."""
    text = REMOTE_SCRIPT.read_text()
    assert "technician_ops" not in text.replace("technician-ops", "")
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(REMOTE_SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
