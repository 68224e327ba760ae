"""Tamper evidence: verify finds edits, deletions, insertions and reordering - on both backends.

The tests change the database behind the store's back, with plain SQL, the
way someone editing the SQLite file or the PostgreSQL table would.
"""

from __future__ import annotations

import io
import json

import pytest

from technician_ops.audit import AuditStore, verify_jsonl
from technician_ops.audit.chain import canonical_json, chain_hash

from tests.audit.conftest import Backend
from tests.audit.helpers import finished_run


@pytest.fixture
def chain(store: AuditStore) -> list[dict]:
    return [finished_run(store, f"rb-{i}") for i in range(1, 6)]


def test_intact_chain_verifies(store: AuditStore, chain: list[dict]) -> None:
    result = store.verify()
    assert result.ok and result.checked == 5 and result.reason is None
    assert [r["seq"] for r in chain] == [1, 2, 3, 4, 5]
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(chain, chain[1:]))


def test_empty_store_verifies(store: AuditStore) -> None:
    assert store.verify().ok and store.verify().checked == 0


def test_edited_record_body(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("UPDATE runs SET record = replace(record, '\"outcome\":\"succeeded\"', '\"outcome\":\"failed\"') "
                "WHERE seq = 3")
    result = store.verify()
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_run_id) == (3, chain[2]["run_id"])
    assert "edited" in (result.reason or "")
    assert result.checked == 2


def test_body_edited_into_invalid_json(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("UPDATE runs SET record = 'not json {' WHERE seq = 4")
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 4 and result.first_bad_run_id == chain[3]["run_id"]
    assert "edited" in (result.reason or "")


def test_edited_summary_column(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("UPDATE runs SET outcome = 'failed' WHERE seq = 2")
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 2 and result.first_bad_run_id == chain[1]["run_id"]
    assert "outcome" in (result.reason or "")


def test_deleted_middle_record(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("DELETE FROM runs WHERE seq = 3")
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 3
    assert result.first_bad_run_id == chain[3]["run_id"]  # the record that follows the gap
    assert "deleted" in (result.reason or "")


def test_deleted_middle_record_with_renumbering(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("DELETE FROM runs WHERE seq = 3")
    backend.raw("UPDATE runs SET seq = seq - 1 WHERE seq = 4")
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 3 and result.first_bad_run_id == chain[3]["run_id"]


def test_deleted_last_record(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("DELETE FROM runs WHERE seq = 5")
    result = store.verify()
    assert not result.ok and result.checked == 4
    assert (result.first_bad_seq, result.first_bad_run_id) == (5, chain[4]["run_id"])
    assert "deleted" in (result.reason or "")


def test_swapped_pair(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("UPDATE runs SET seq = -1 WHERE seq = 2")
    backend.raw("UPDATE runs SET seq = 2 WHERE seq = 3")
    backend.raw("UPDATE runs SET seq = 3 WHERE seq = -1")
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 2
    assert result.first_bad_run_id == chain[2]["run_id"]
    assert "reordered" in (result.reason or "")


def test_inserted_record_after_head(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    forged = dict(chain[4], run_id="01900000-0000-7000-8000-000000000000", seq=6, prev_hash=chain[4]["hash"])
    body = {k: v for k, v in forged.items() if k not in ("prev_hash", "hash")}
    from technician_ops.audit.chain import chain_hash

    text = canonical_json(body)
    backend.raw("INSERT INTO runs (run_id, runbook, path, started_at, ended_at, outcome, check_run, writer_host, "
                "writer_pid, header, seq, prev_hash, hash, record) VALUES (?, ?, '', ?, ?, ?, 0, 'h', 1, '{}', 6, ?, ?, ?)",
                forged["run_id"], forged["runbook"], forged["started_at"], forged["ended_at"], forged["outcome"],
                forged["prev_hash"], chain_hash(forged["prev_hash"], text), text)
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 6 and result.first_bad_run_id == forged["run_id"]
    assert "head" in (result.reason or "")


def test_inserted_record_in_the_middle(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    # Shift 3..5 up by one and slip a well-formed record in at seq 3, linked to seq 2.
    for seq in (5, 4, 3):
        backend.raw("UPDATE runs SET seq = ? WHERE seq = ?", seq + 1, seq)
    backend.raw("UPDATE chain_head SET seq = 6")
    from technician_ops.audit.chain import chain_hash

    body = {k: v for k, v in chain[1].items() if k not in ("prev_hash", "hash")}
    body.update(run_id="01900000-0000-7000-8000-00000000abcd", seq=3)
    text = canonical_json(body)
    backend.raw("INSERT INTO runs (run_id, runbook, path, started_at, ended_at, outcome, check_run, writer_host, "
                "writer_pid, header, seq, prev_hash, hash, record) VALUES (?, ?, '', ?, ?, ?, 0, 'h', 1, '{}', 3, ?, ?, ?)",
                body["run_id"], body["runbook"], body["started_at"], body["ended_at"], body["outcome"],
                chain[1]["hash"], chain_hash(chain[1]["hash"], text), text)
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 3 and result.first_bad_run_id == body["run_id"]
    assert "inserted" in (result.reason or "")


def test_deleted_chain_head(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    backend.raw("DELETE FROM chain_head")
    result = store.verify()
    assert not result.ok and "head" in (result.reason or "")


def test_export_round_trip(backend: Backend, store: AuditStore, chain: list[dict]) -> None:
    buf = io.StringIO()
    assert store.export_jsonl(buf) == 5
    lines = buf.getvalue().splitlines()
    assert len(lines) == 5
    records = [json.loads(line) for line in lines]
    assert records == [store.get(r["run_id"]) for r in chain]
    assert all(line == canonical_json(rec) for line, rec in zip(lines, records))
    offline = verify_jsonl(io.StringIO(buf.getvalue()))
    assert offline.ok and offline.checked == 5
    # An edited export line is caught offline too.
    records[1]["params"]["primary"] = "db9"
    tampered = "\n".join(canonical_json(r) for r in records) + "\n"
    bad = verify_jsonl(io.StringIO(tampered))
    assert not bad.ok and bad.first_bad_seq == 2 and "edited" in (bad.reason or "")


def test_running_runs_are_not_exported(store: AuditStore) -> None:
    from tests.audit.helpers import make_header

    finished_run(store)
    store.start_run(make_header())
    buf = io.StringIO()
    assert store.export_jsonl(buf) == 1


@pytest.mark.parametrize("column, value", [("check_run", 1), ("ended_at", None), ("runbook", "rb-x")])
def test_every_summary_column_edit_is_named(backend: Backend, store: AuditStore, chain: list[dict],
                                            column: str, value: object) -> None:
    """The database-side comparison (SQLite) and the Python one agree on which column was edited."""
    backend.raw(f"UPDATE runs SET {column} = ? WHERE seq = 3", value)
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 3 and result.checked == 2
    name = {"check_run": "check"}.get(column, column)
    assert f"column {name!r}" in (result.reason or "")


def test_text_that_json_renders_differently_still_verifies(store: AuditStore) -> None:
    """Non-ASCII, quotes and escapes in the summary fields: equal values, whatever their JSON spelling."""
    finished_run(store, "café-ü \"quoted\" \\ back\\slash\ttab ☃")
    finished_run(store, "plain")
    result = store.verify()
    assert result.ok and result.checked == 2


def test_record_only_python_can_confirm_still_verifies(backend: Backend, store: AuditStore,
                                                       chain: list[dict]) -> None:
    """A body spelling ``check`` as 0 is equal in value; SQLite flags it, the Python walk accepts it.

    The record is re-hashed and the chain head moved, as the store itself would have written it.
    (PostgreSQL reads the field as the text '0' and calls it edited; the store never writes 0.)
    """
    if backend.name != "sqlite":
        pytest.skip("SQLite's body check beside the walk")
    body, prev_hash = backend.raw("SELECT record, prev_hash FROM runs WHERE seq = 5")[0]
    assert '"check":false' in body
    body = body.replace('"check":false', '"check":0')
    digest = chain_hash(prev_hash, body)
    backend.raw("UPDATE runs SET record = ?, hash = ? WHERE seq = 5", body, digest)
    backend.raw("UPDATE chain_head SET hash = ? WHERE id = 1", digest)
    result = store.verify()
    assert result.ok and result.checked == 5


def test_intact_sqlite_chain_is_walked_once_beside_the_body_check(backend: Backend, store: AuditStore,
                                                                  chain: list[dict],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite overlaps its JSON check with the hashing; only a problem sends verify to the single walk."""
    if backend.name != "sqlite":
        pytest.skip("PostgreSQL verifies in one walk")
    single_walks: list[bool] = []
    real_walk = type(store)._walk
    monkeypatch.setattr(type(store), "_walk",
                        lambda self, walker, fast: single_walks.append(fast) or real_walk(self, walker, fast))
    assert store.verify().ok and single_walks == []
    backend.raw("UPDATE runs SET runbook = 'rb-x' WHERE seq = 4")  # links and hashes still hold
    result = store.verify()
    assert not result.ok and result.first_bad_seq == 4 and "column 'runbook'" in (result.reason or "")
    assert single_walks == [True]
