"""The controller's backup store: layout, modes, integrity and retention."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from technician_ops.steps.backup.store import BackupCorrupted, BackupError, BackupStore, sha256_file
from technician_ops.errors import ExitCode


def _put(store: BackupStore, run_id: str, host: str, name: str, runbook: str, data: bytes = b"payload"):
    path = store.path_for(run_id, host, name)
    path.write_bytes(data)
    return store.record(run_id, host, name, runbook=runbook, kind="files", sha256=hashlib.sha256(data).hexdigest())


def test_layout_and_modes(tmp_path: Path) -> None:
    os.umask(0o022)
    store = BackupStore(tmp_path / ".technician-ops" / "backups")
    rec = _put(store, "20240101-abc", "web1", "etc.tar", "patch-web")
    path = Path(rec.path)
    assert path == tmp_path / ".technician-ops" / "backups" / "20240101-abc" / "web1" / "etc.tar"
    for d in (store.root, path.parent.parent, path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((path.parent.parent / "index.json").stat().st_mode) == 0o600
    assert rec.sha256 == sha256_file(path) and rec.size == len(b"payload")
    assert store.list() == [rec]
    assert store.list("20240101-abc") == [rec]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "web 1"])
def test_path_components_cannot_escape(tmp_path: Path, bad: str) -> None:
    store = BackupStore(tmp_path / "backups")
    with pytest.raises(BackupError, match="invalid"):
        store.path_for("run", bad, "n")
    with pytest.raises(BackupError, match="invalid"):
        store.path_for(bad, "h", "n")


def test_transfer_corruption_and_later_tampering_are_caught(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "backups")
    path = store.path_for("r1", "db1", "x.tar")
    path.write_bytes(b"what arrived")
    with pytest.raises(BackupCorrupted, match="arrived corrupted") as info:
        store.record("r1", "db1", "x.tar", runbook="rb", kind="files", sha256=hashlib.sha256(b"what was sent").hexdigest())
    assert info.value.exit_code == ExitCode.DATAERR

    rec = _put(store, "r1", "db1", "y.tar", "rb", b"good bytes")
    store.verify(rec)
    Path(rec.path).write_bytes(b"good bytez")
    with pytest.raises(BackupCorrupted, match="corrupted"):
        store.verify(rec)
    Path(rec.path).unlink()
    with pytest.raises(BackupCorrupted, match="missing"):
        store.verify(rec)


def test_prune_keeps_last_n_runs_per_runbook(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "backups")
    runs = [f"run-{i}" for i in range(5)]
    for r in runs:
        _put(store, r, "web1", "a.tar", "patch-web")
        _put(store, r, "web2", "a.tar", "patch-web")
    _put(store, "other-1", "db1", "d.dump", "db-failover")

    # The audit store's order wins over creation times: here run-0 is newest.
    order = runs[1:] + ["run-0"]
    removed = store.prune("patch-web", keep=2, order=order)
    assert removed == ["run-1", "run-2", "run-3"]
    left = {p.name for p in store.root.iterdir()}
    assert left == {"run-4", "run-0", "other-1"}
    assert {r.run_id for r in store.list()} == {"run-4", "run-0", "other-1"}

    # Without an order: by when each run's first backup was recorded.
    assert store.prune("patch-web", keep=1) == ["run-0"]  # recorded first
    assert {p.name for p in store.root.iterdir()} == {"run-4", "other-1"}
    assert store.prune("patch-web", keep=1) == []
    assert store.prune("db-failover", keep=0) == ["other-1"]
    with pytest.raises(BackupError):
        store.prune("patch-web", keep=-1)


def test_one_run_belongs_to_one_runbook(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "backups")
    _put(store, "r1", "h", "a", "rb-one")
    with pytest.raises(BackupError, match="already holds backups of runbook rb-one"):
        _put(store, "r1", "h", "b", "rb-two")


def _record_many(root: str, host: str) -> None:
    store = BackupStore(Path(root))
    for i in range(20):
        _put(store, "run-1", host, f"b{i}.tar", "patch-web", data=f"{host}-{i}".encode())


def test_hosts_recording_at_once_lose_no_entry(tmp_path: Path) -> None:
    """Each host's backup is recorded by its own Ansible worker process, concurrently."""
    import multiprocessing

    root = tmp_path / "backups"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_record_many, args=(str(root), f"web{n}")) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    entries = BackupStore(root).list("run-1")
    assert len(entries) == 80
    assert {e.host for e in entries} == {"web0", "web1", "web2", "web3"}
