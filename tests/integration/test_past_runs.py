"""``technician-ops rollback`` and ``backups list`` end to end: real ansible-runner, real backups.

The bundled ``patch-web`` runbook runs successfully (healthy=true), so it
really changes the web hosts' config; ``rollback RUN_ID`` must then put every
file back byte- and mode-identical, remove the file the patch added, and be
its own audit record pointing at the original run.  The refusals (a run that
did not succeed, a missing or corrupted backup, no --yes without a terminal)
must change nothing at all.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from technician_ops import api, past_runs
from technician_ops.audit import open_store
from technician_ops.errors import ApprovalMissing, ExitCode
from technician_ops.events import Event, Kind, Outcome
from tests.conftest import DemoProject

pytestmark = pytest.mark.integration
WEB = ("web1", "web2")


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)


def snapshot(directory: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every entry below ``directory``: type, content, permission bits."""
    out: dict[str, tuple[str, bytes | None, int]] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        out[str(path.relative_to(directory))] = (kind, path.read_bytes() if kind == "file" else None,
                                                 stat.S_IMODE(st.st_mode))
    return out


def hosts_state(demo: DemoProject) -> dict[str, Any]:
    return {h: snapshot(demo.host_dir(h)) for h in WEB}


def run_patch(demo: DemoProject, healthy: bool = True) -> api.RunResult:
    with open_store(None, demo.root) as store:
        return api.run(api.RunRequest("patch-web", {"healthy": str(healthy).lower()}, yes=True, skip_preflight=True),
                       demo.project(), [Collect()], audit=store)


def rollback(demo: DemoProject, run_id: str, **kw: Any) -> tuple[api.RunResult, Collect]:
    sink = Collect()
    with open_store(None, demo.root) as store:
        result = past_runs.rollback_run(demo.project(), run_id, sinks=[sink], audit=store, skip_preflight=True, **kw)
    return result, sink


@pytest.fixture
def patched(demo: DemoProject) -> tuple[DemoProject, dict[str, Any], str]:
    """patch-web applied successfully; returns the host state from before it and its run id."""
    for h in WEB:  # a pre-existing config with its own mode, so a restore has something to get right
        conf = demo.host_dir(h) / "conf"
        conf.mkdir()
        os.chmod(conf, 0o755)  # the seed step sets 0755 before the backup; its undo does not revert it
        (conf / "app.conf").write_text(f"workers = 2\n# {h}\n")
        os.chmod(conf / "app.conf", 0o640)
    before = hosts_state(demo)
    result = run_patch(demo)
    assert result.outcome is Outcome.SUCCEEDED, result
    after = hosts_state(demo)
    for h in WEB:
        assert after[h] != before[h] and "conf/tuning.conf" in after[h]
    return demo, before, result.run_id


def test_rollback_of_a_succeeded_run_restores_the_earlier_state(patched: tuple[DemoProject, dict[str, Any], str]) -> None:
    demo, before, run_id = patched

    result, sink = rollback(demo, run_id, yes=True)

    assert result.outcome is Outcome.SUCCEEDED and result.exit_code == ExitCode.OK, result
    assert result.run_id != run_id
    assert hosts_state(demo) == before  # bytes and modes; tuning.conf is gone
    restored = [e.data for e in sink.events if e.kind is Kind.ARTIFACT and e.data.get("type") == "backup_restored"]
    assert sorted(r["host"] for r in restored) == list(WEB)
    with open_store(None, demo.root) as store:
        rec = store.get(result.run_id)
        original = store.get(run_id)
        assert store.verify().ok
    assert rec["rollback_of"] == run_id and rec["action"] == "rollback" and rec["outcome"] == "succeeded"
    assert rec["runbook"] == "patch-web" and rec["rollback"]["outcome"] == "rolled_back"
    assert rec["rollback"]["planned"] == ["patch", "backup-config"]  # seed changed nothing: no undo, as in a run's own rollback
    assert original["outcome"] == "succeeded"  # the original record is never edited

    # A second rollback of the same run is refused: it was already undone.
    with pytest.raises(past_runs.PastRunError, match="already undone"):
        rollback(demo, run_id, yes=True)


def test_rollback_refuses_a_run_that_did_not_succeed(demo: DemoProject) -> None:
    failed = run_patch(demo, healthy=False)
    assert failed.outcome is Outcome.ROLLED_BACK
    before = hosts_state(demo)

    with pytest.raises(past_runs.PastRunError, match="ended rolled_back, not succeeded") as info:
        rollback(demo, failed.run_id, yes=True)

    assert info.value.exit_code == ExitCode.DATAERR
    assert hosts_state(demo) == before


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_rollback_refuses_missing_or_corrupted_backups(patched: tuple[DemoProject, dict[str, Any], str], damage: str) -> None:
    demo, _before, run_id = patched
    victim = next(b for b in past_runs.list_backups(demo.project(), run_id) if b.host == "web2")
    if damage == "corrupt":
        with open(victim.path, "r+b") as fh:
            fh.seek(100)
            fh.write(b"X")
    else:
        os.unlink(victim.path)
    listed = {b.host: b.status for b in past_runs.list_backups(demo.project(), run_id[:13])}
    assert listed == {"web1": "ok", "web2": "corrupted" if damage == "corrupt" else "missing"}
    patched_state = hosts_state(demo)

    with pytest.raises(past_runs.PastRunError, match="missing or corrupted") as info:
        rollback(demo, run_id, yes=True)

    assert "web2" in info.value.message
    assert hosts_state(demo) == patched_state  # nothing changed, web1 included
    with open_store(None, demo.root) as store:
        assert [r["run_id"] for r in store.history("patch-web")] == [run_id]  # no run was started


def test_rollback_refuses_a_run_superseded_by_a_later_one(patched: tuple[DemoProject, dict[str, Any], str]) -> None:
    demo, _before, first = patched
    second = run_patch(demo)
    assert second.outcome is Outcome.SUCCEEDED

    with pytest.raises(past_runs.PastRunError, match=f"run {second.run_id} .* would also undo its changes") as info:
        rollback(demo, first, yes=True)
    assert info.value.hint is not None and f"roll back {second.run_id} first" in info.value.hint
    # newest first works, and then the older one is no longer blocked
    assert rollback(demo, second.run_id, yes=True)[0].outcome is Outcome.SUCCEEDED
    assert rollback(demo, first, yes=True)[0].outcome is Outcome.SUCCEEDED


def test_rollback_without_yes_and_without_a_terminal_is_refused(patched: tuple[DemoProject, dict[str, Any], str]) -> None:
    demo, _before, run_id = patched
    patched_state = hosts_state(demo)

    with pytest.raises(ApprovalMissing):
        rollback(demo, run_id, prompt=None)
    asked: list[str] = []
    with pytest.raises(ApprovalMissing, match="not confirmed"):
        rollback(demo, run_id, prompt=lambda what, text: bool(asked.append(text)))
    assert "backup-config (backup) on web1, web2" in asked[0]

    assert hosts_state(demo) == patched_state
    with open_store(None, demo.root) as store:
        refused = [store.get(r["run_id"]) for r in store.history("patch-web") if r["outcome"] == "refused"]
    assert len(refused) == 2 and all(r["rollback_of"] == run_id for r in refused)

    # The same through the CLI, with no terminal on stdin: exit 5.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), "rollback", run_id],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == ExitCode.APPROVAL_MISSING, proc.stderr
    assert "--yes" in proc.stderr
    assert hosts_state(demo) == patched_state


def test_cli_backups_list_and_rollback_yes(patched: tuple[DemoProject, dict[str, Any], str]) -> None:
    demo, before, run_id = patched
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    base = [sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root)]

    listing = subprocess.run([*base, "backups", "list", run_id], capture_output=True, text=True, env=env, timeout=60)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 2 and all(run_id in l and "backup-config" in l and l.endswith(" ok") for l in lines)

    proc = subprocess.run([*base, "rollback", run_id, "--yes", "--skip-preflight", "--output", "json"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"rollback_of": "%s"' % run_id in proc.stdout
    assert hosts_state(demo) == before
