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

from technician_ops import api
from technician_ops import api as past_runs
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


def cli(demo: DemoProject, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "technician_ops.cli", "--project", str(demo.root), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)


def test_rollback_restores_the_earlier_state_newest_run_first(patched: tuple[DemoProject, dict[str, Any], str]) -> None:
    demo, before, first = patched
    second = run_patch(demo)  # the same patch again: a newer succeeded run of the same runbook
    assert second.outcome is Outcome.SUCCEEDED

    # Undoing the older run first would clobber the newer one's change: refused, nothing changed.
    with pytest.raises(past_runs.PastRunError, match=f"run {second.run_id} .* would also undo its changes") as info:
        rollback(demo, first, yes=True)
    assert info.value.hint is not None and f"roll back {second.run_id} first" in info.value.hint

    # Newest first: the second through the CLI (--yes, JSON events), then the first through the API.
    proc = cli(demo, "rollback", second.run_id, "--yes", "--skip-preflight", "--output", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"rollback_of": "%s"' % second.run_id in proc.stdout
    result, sink = rollback(demo, first, yes=True)

    assert result.outcome is Outcome.SUCCEEDED and result.exit_code == ExitCode.OK, result
    assert result.run_id != first
    assert hosts_state(demo) == before  # bytes and modes; tuning.conf is gone
    restored = [e.data for e in sink.events if e.kind is Kind.ARTIFACT and e.data.get("type") == "backup_restored"]
    assert sorted(r["host"] for r in restored) == list(WEB)
    with open_store(None, demo.root) as store:
        rec = store.get(result.run_id)
        original = store.get(first)
        assert store.verify().ok
    assert rec["rollback_of"] == first and rec["action"] == "rollback" and rec["outcome"] == "succeeded"
    assert rec["runbook"] == "patch-web" and rec["rollback"]["outcome"] == "rolled_back"
    assert rec["rollback"]["planned"] == ["patch", "backup-config"]  # seed changed nothing: no undo, as in a run's own rollback
    assert original["outcome"] == "succeeded"  # the original record is never edited

    # A second rollback of the same run is refused: it was already undone.
    with pytest.raises(past_runs.PastRunError, match="already undone"):
        rollback(demo, first, yes=True)


def test_rollback_refuses_a_run_that_did_not_succeed(demo: DemoProject) -> None:
    failed = run_patch(demo, healthy=False)
    assert failed.outcome is Outcome.ROLLED_BACK
    before = hosts_state(demo)

    with pytest.raises(past_runs.PastRunError, match="ended rolled_back, not succeeded") as info:
        rollback(demo, failed.run_id, yes=True)

    assert info.value.exit_code == ExitCode.DATAERR
    assert hosts_state(demo) == before


def test_refusals_change_nothing(patched: tuple[DemoProject, dict[str, Any], str]) -> None:
    demo, _before, run_id = patched
    patched_state = hosts_state(demo)

    # No --yes and no terminal (API and CLI: exit 5), or a declined prompt.
    with pytest.raises(ApprovalMissing):
        rollback(demo, run_id, prompt=None)
    asked: list[str] = []
    with pytest.raises(ApprovalMissing, match="not confirmed"):
        rollback(demo, run_id, prompt=lambda what, text: bool(asked.append(text)))
    assert "backup-config (backup) on web1, web2" in asked[0]
    proc = cli(demo, "rollback", run_id)
    assert proc.returncode == ExitCode.APPROVAL_MISSING and "--yes" in proc.stderr, proc.stderr
    with open_store(None, demo.root) as store:
        refused = [store.get(r["run_id"]) for r in store.history("patch-web") if r["outcome"] == "refused"]
    assert len(refused) == 3 and all(r["rollback_of"] == run_id for r in refused)

    listing = cli(demo, "backups", "list", run_id[:13])
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 2 and all(run_id in l and "backup-config" in l and l.endswith(" ok") for l in lines)

    # A corrupted, then a missing backup of one host: refused before any host is touched.
    victim = next(b for b in past_runs.list_backups(demo.project(), run_id) if b.host == "web2")
    with open(victim.path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    for status in ("corrupted", "missing"):
        listed = {b.host: b.status for b in past_runs.list_backups(demo.project(), run_id)}
        assert listed == {"web1": "ok", "web2": status}
        with pytest.raises(past_runs.PastRunError, match="missing or corrupted") as info:
            rollback(demo, run_id, yes=True)
        assert "web2" in info.value.message and "web1" not in info.value.message
        assert hosts_state(demo) == patched_state
        Path(victim.path).unlink(missing_ok=True)
    with open_store(None, demo.root) as store:
        assert {r["outcome"] for r in store.history("patch-web")} == {"succeeded", "refused"}  # no rollback started
