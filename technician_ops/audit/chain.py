"""The hash chain that makes the audit log tamper evident.

Finalized records are chained in the order they were finalized: record ``seq``
(contiguous from 1) stores ``prev_hash`` (the hash of record ``seq - 1``, or
``GENESIS`` for the first) and

    hash = sha256(prev_hash + canonical_json(body))

where ``body`` is the folded record including its ``seq`` (but not
``prev_hash``/``hash``).  Because the body carries its own ``seq`` and the
previous hash, any edit, deletion, insertion or reordering breaks either a
hash or a link.  A separate one-row head (last seq, hash, run id) catches the
deletion of the newest records, which a chain alone cannot see.

The walker here is shared by the stores and by ``verify_jsonl`` so an export
can be checked offline with the same rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

GENESIS = "0" * 64

# Summary columns the stores keep beside the hashed body (for fast history
# queries); verify checks them against the body so editing one is caught too.
SUMMARY_FIELDS = ("run_id", "seq", "runbook", "outcome", "started_at", "ended_at", "check")


def canonical_json(obj: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body_text: str) -> str:
    return hashlib.sha256((prev_hash + body_text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of walking the chain.

    ``first_bad_seq`` is the first position where the chain is wrong (for a
    deletion, the missing seq).  ``first_bad_run_id`` is the run to look at:
    the edited/inserted/misplaced record, the record that follows a deleted
    one, or for deleted newest records the run id the chain head remembers.
    """

    ok: bool
    checked: int
    first_bad_run_id: str | None = None
    first_bad_seq: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ChainRow:
    """One finalized record as stored: its link fields, body text and columns."""

    seq: int
    run_id: str
    prev_hash: str
    hash: str
    body_text: str
    columns: dict[str, Any] | None = None  # summary columns, None when not stored separately
    # The body's SUMMARY_FIELDS as the database extracted them (in C, much
    # faster than json.loads per record); None: parse body_text here.
    body_fields: dict[str, Any] | None = None
    # True: the database already found the body's summary fields equal to the
    # columns (store-side comparison, see AuditStore._chain_sql); only the
    # links and the hash are left to check here.  A row it could not confirm
    # comes with False and is checked field by field, for the exact reason.
    fields_verified: bool = False


class ChainBreak(Exception):
    """Raised inside the walker at the first bad record (internal control flow)."""

    def __init__(self, seq: int, run_id: str | None, reason: str, *, link_broken: bool = False,
                 wanted_prev: str | None = None) -> None:
        super().__init__(reason)
        self.seq = seq
        self.run_id = run_id
        self.reason = reason
        self.link_broken = link_broken
        self.wanted_prev = wanted_prev


class ChainWalker:
    """Checks rows fed in ascending ``seq`` order; raises ``ChainBreak`` at the first bad one.

    O(1) memory, one sha256 and one JSON parse per record.
    """

    def __init__(self, head_seq: int | None = None) -> None:
        self.head_seq = head_seq
        self.expected = 1
        self.prev_hash = GENESIS
        self.prev_run_id: str | None = None
        self.last_hash = GENESIS
        self.checked = 0

    def feed(self, row: ChainRow) -> None:
        if row.fields_verified:
            self.feed_verified(row.seq, row.run_id, row.prev_hash, row.hash, row.body_text)
            return
        self._check_link(row.seq, row.run_id, row.prev_hash, row.hash, row.body_text)
        self._check_body(row)
        self._accept(row.run_id, row.hash)

    def feed_verified(self, seq: int, run_id: str, prev_hash: str, digest: str, body_text: str) -> None:
        """A row whose body fields the database already matched to its columns.

        The same as ``feed(ChainRow(..., fields_verified=True))`` without
        building a ChainRow: at 100,000 rows the object was ~10 % of verify.
        """
        self._check_link(seq, run_id, prev_hash, digest, body_text)
        self._accept(run_id, digest)

    def _check_link(self, seq: int, run_id: str, prev_hash: str, digest: str, body_text: str) -> None:
        if seq != self.expected:
            if seq > self.expected:
                missing = (f"seq {self.expected}" if seq == self.expected + 1
                           else f"seqs {self.expected}..{seq - 1}")
                raise ChainBreak(self.expected, run_id,
                                 f"{missing} missing: record deleted (chain jumps from seq "
                                 f"{self.expected - 1} to {seq}, run {run_id})")
            raise ChainBreak(seq, run_id, f"duplicate seq {seq}: record inserted")
        if self.head_seq is not None and seq > self.head_seq:
            raise ChainBreak(seq, run_id,
                             f"record beyond the chain head (head is seq {self.head_seq}): "
                             "inserted without going through the store")
        if prev_hash != self.prev_hash:
            raise ChainBreak(seq, run_id,
                             f"broken link: prev_hash does not match the hash of seq {seq - 1}",
                             link_broken=True, wanted_prev=prev_hash)
        if chain_hash(prev_hash, body_text) != digest:
            raise ChainBreak(seq, run_id, "record edited: its content does not match its hash")

    def _accept(self, run_id: str, digest: str) -> None:
        self.prev_hash = digest
        self.prev_run_id = run_id
        self.last_hash = digest
        self.expected += 1
        self.checked += 1

    @staticmethod
    def _check_body(row: ChainRow) -> None:
        """The hashed body agrees with the row's seq, run_id and summary columns."""
        if row.body_fields is not None:
            body: Any = row.body_fields
        else:
            try:
                body = json.loads(row.body_text)
            except ValueError:
                raise ChainBreak(row.seq, row.run_id, "record edited: body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ChainBreak(row.seq, row.run_id, "record edited: body is not a JSON object")
        if body.get("seq") != row.seq or body.get("run_id") != row.run_id:
            raise ChainBreak(row.seq, row.run_id,
                             "record moved: its seq/run_id columns disagree with the hashed record")
        if row.columns is not None:
            for name, value in row.columns.items():
                if body.get(name) != value:
                    raise ChainBreak(row.seq, row.run_id,
                                     f"record edited: column {name!r} disagrees with the hashed record")

    @property
    def last_seq(self) -> int:
        return self.expected - 1


def explain_link(brk: ChainBreak, found_seq: int | None, found_run_id: str | None,
                 prev_run_id: str | None) -> tuple[int, str | None, str]:
    """Turn a broken link into the most specific (seq, run_id, reason).

    ``found_seq`` is where the hash this record links to actually lives.
    """
    if found_seq is None:
        return (brk.seq, brk.run_id,
                f"broken link at seq {brk.seq}: it links to a hash no record has "
                f"(the record before it was edited and re-hashed, or records were deleted and renumbered)")
    if found_seq > brk.seq:
        return (brk.seq, brk.run_id,
                f"reordered: seq {brk.seq} links to seq {found_seq} (run {found_run_id}), which comes after it")
    if found_seq == brk.seq - 2:
        return (brk.seq - 1, prev_run_id,
                f"inserted: seq {brk.seq - 1} is not linked from its successor, which links to seq {found_seq}")
    return (brk.seq, brk.run_id,
            f"broken link at seq {brk.seq}: it links to seq {found_seq}; records between were inserted or replaced")


def finish_walk(walker: ChainWalker, head: tuple[int, str, str | None] | None) -> VerifyResult:
    """Compare the walked chain with the head row; the last step of every verify."""
    n = walker.checked
    if head is None:
        if n:
            return VerifyResult(False, n, None, walker.last_seq, "chain head row is missing")
        return VerifyResult(True, 0)
    head_seq, head_hash, head_run = head
    if head_seq > walker.last_seq:
        missing = walker.last_seq + 1
        return VerifyResult(False, n, head_run if head_seq == missing else None, missing,
                            f"newest record(s) deleted: the chain head is seq {head_seq} "
                            f"(run {head_run}) but the chain ends at seq {walker.last_seq}")
    if head_hash != walker.last_hash:
        return VerifyResult(False, n, head_run, head_seq,
                            "chain head hash does not match the newest record: it was replaced")
    return VerifyResult(True, n)


def verify_jsonl(fp: TextIO | Iterable[str]) -> VerifyResult:
    """Verify an ``export_jsonl`` file offline, with the same rules as the store.

    An export has no head row, so deleting its last lines is not detectable
    here: compare ``checked`` and the last hash with the live store for that.
    """
    walker = ChainWalker()
    for lineno, line in enumerate(fp, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            prev_hash, digest = rec.pop("prev_hash"), rec.pop("hash")
            row = ChainRow(int(rec["seq"]), str(rec["run_id"]), prev_hash, digest, canonical_json(rec))
        except (ValueError, KeyError, TypeError) as exc:
            return VerifyResult(False, walker.checked, None, walker.expected, f"line {lineno}: not a record ({exc})")
        try:
            walker.feed(row)
        except ChainBreak as brk:
            return VerifyResult(False, walker.checked, brk.run_id, brk.seq, brk.reason)
    return VerifyResult(True, walker.checked)
