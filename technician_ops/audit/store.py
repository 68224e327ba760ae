"""The audit store: one record per run, written as the run goes, hash chained.

``AuditStore`` holds every rule (schema, append, fold, chain, verify, reap);
the SQLite and PostgreSQL subclasses only supply a connection, transactions
and the SQL dialect differences.  That is what "same schema, same tests"
rests on: there is one implementation of the behaviour.

Write path, and why it is shaped so:

- ``start_run`` inserts the header row (outcome ``running``, not chained).
- ``append_many`` inserts one ``events`` row per event, a group of events in
  one transaction (one commit, one fsync): O(1) per event, nothing
  rewritten, so a crash loses at most the group being written.  ``append``
  is a group of one.  ``AuditSink`` groups what the run emitted while the
  previous group was being committed.
- ``finish`` folds header + events into the record and chains it, under the
  chain lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR
  UPDATE`` on the head row), so two processes finishing at once still
  produce a contiguous chain.
- A run whose process died (SIGKILL, power loss) stays ``running`` until the
  next ``open_store`` on the same host sees its pid is gone and finalizes it
  as ``interrupted`` (``reap_stale``).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as _dt
import enum
import json
import os
import pathlib
import socket
import threading
from contextlib import AbstractContextManager
from typing import Any, Iterator, NamedTuple, Protocol, Sequence, TextIO

from technician_ops.errors import AuditError, AuditTampered, NotFound
from technician_ops.events import Event, Outcome

from technician_ops.audit.chain import (GENESIS, ChainBreak, ChainRow, ChainWalker, VerifyResult, canonical_json,
                    chain_hash, explain_link, finish_walk)
from technician_ops.audit.fold import FINAL_OUTCOMES, finalize, fold, iso_utc

SCHEMA_VERSION = 1

# Portable DDL: TEXT bodies (never jsonb: the hashed bytes must survive
# untouched), fixed-width UTC text timestamps that sort correctly.
SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        runbook TEXT NOT NULL,
        path TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        outcome TEXT NOT NULL,
        check_run INTEGER NOT NULL,
        user_name TEXT,
        origin_type TEXT,
        writer_host TEXT NOT NULL,
        writer_pid INTEGER NOT NULL,
        writer_start TEXT,
        header TEXT NOT NULL,
        seq BIGINT UNIQUE,
        prev_hash TEXT,
        hash TEXT,
        record TEXT)""",
    "CREATE INDEX IF NOT EXISTS runs_runbook_started ON runs (runbook, started_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_running ON runs (writer_host) WHERE outcome = 'running'",
    """CREATE TABLE IF NOT EXISTS events (
        run_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        kind TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, n))""",
    # ``approve RUN_ID``: which run released a held (awaiting_approval) run, so it is released once.  A claim,
    # not history: the released run's own record (``releases``) is what the chain keeps.
    """CREATE TABLE IF NOT EXISTS releases (
        held_run_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        released_by TEXT NOT NULL,
        released_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS chain_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        run_id TEXT)""",
)

_SUMMARY_COLS = "run_id, runbook, outcome, started_at, ended_at, user_name, origin_type, check_run, seq"
_CHAIN_COLS = "seq, run_id, prev_hash, hash, record, runbook, outcome, started_at, ended_at, check_run"
# The body fields verify compares with the row (order matters: see _chain_row).
_BODY_FIELDS = ("seq", "run_id", "runbook", "outcome", "started_at", "ended_at", "check")
_RUN_ID_CHARS = frozenset("0123456789abcdef-")
# The outcomes of a run that never started: ``record_skipped`` writes them.
NOT_STARTED = (Outcome.SKIPPED.value, Outcome.REFUSED.value, Outcome.AWAITING_APPROVAL.value)


def _json_default(value: Any) -> Any:
    """Make event data storable: paths, times, enums and sets become plain JSON."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (pathlib.PurePath,)):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


# --- process liveness, for reaping -------------------------------------------------

_PROC = pathlib.Path("/proc")


def _boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_identity(pid: int) -> str | None:
    """``boot_id:starttime`` of a live process, None if it is gone (or a zombie).

    Comparing the identity, not just the pid, keeps a recycled pid (or a
    reboot) from making a dead run look alive.  None off Linux as well.
    """
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return f"{_boot_id()}:{fields[19]}"


def pid_alive(pid: int, identity: str | None) -> bool:
    if _PROC.joinpath("self").exists():
        current = process_identity(pid)
        return current is not None and (identity is None or current == identity)
    try:  # no /proc: the best portable check
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_host() -> str:
    return socket.gethostname()


class RunRow(NamedTuple):
    """One run as ``run_rows`` reads it: the summary columns, times as the store's UTC text."""

    run_id: str
    runbook: str
    outcome: str
    started_at: str
    ended_at: str | None
    check: bool
    reaped: bool  # an interrupted run finished by reap_stale: its ended_at is when that noticed


class BackgroundQuery(Protocol):
    """A query running on a connection of its own (``AuditStore._start_body_check``)."""

    def result(self) -> list[tuple[Any, ...]]:
        """Wait for it; its rows, or the error it raised."""

    def cancel(self) -> None:
        """Stop it if it still runs and wait for it; its result is dropped."""


class AuditStore(abc.ABC):
    """Abstract base: all behaviour.  Subclasses: ``SqliteStore``, ``PostgresStore``.

    Thread safe (one lock around the connection) so events from
    ansible-runner callback threads can be appended directly.
    """

    #: Where this store lives, for messages (never contains a password).
    location: str = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._next_n: dict[str, int] = {}
        self._host = this_host()
        self.unreapable: list[str] = []  # stale runs whose record could not be finished (reap_stale skipped them)

    # --- backend hooks ---------------------------------------------------------------
    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return rows affected.  Outside a transaction it commits."""

    @abc.abstractmethod
    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Iterate a large result without loading it; only inside ``_read_tx``."""

    @abc.abstractmethod
    def _write_tx(self) -> AbstractContextManager[None]:
        """A transaction that serializes with every other finalization."""

    @abc.abstractmethod
    def _read_tx(self) -> AbstractContextManager[None]:
        """A read-only snapshot (so verify/export see one consistent chain)."""

    @abc.abstractmethod
    def _is_unique_violation(self, exc: BaseException) -> bool: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _start_body_check(self, sql: str, params: Sequence[Any]) -> "BackgroundQuery | None":
        """Start ``sql`` on a second connection, off this thread; None: this backend cannot.

        ``verify`` uses it to overlap the database's JSON work with its own
        hashing (see ``_walk_beside_body_check``).
        """
        return None

    _head_lock_suffix = ""  # PostgreSQL: " FOR UPDATE"

    def _json_sql(self, *keys: str) -> str:
        """SQL for the text at ``keys`` inside the ``record`` column's JSON (SQLite's dialect)."""
        return f"json_extract(record, '$.{'.'.join(keys)}')"

    # --- schema ----------------------------------------------------------------------
    def _init_schema(self) -> None:
        with self._write_tx():
            for ddl in SCHEMA:
                self._execute(ddl)
            rows = self._check_schema_version()
            if not rows:
                self._execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            if not self._fetchall("SELECT 1 FROM chain_head WHERE id = 1"):
                # Only on a fresh store: a missing head in a used store is tampering
                # and verify must keep reporting it.
                if not self._fetchall("SELECT 1 FROM runs WHERE seq IS NOT NULL LIMIT 1"):
                    self._execute("INSERT INTO chain_head (id, seq, hash, run_id) VALUES (1, 0, ?, NULL)",
                                  (GENESIS,))

    def _check_schema_version(self) -> list[tuple[Any, ...]]:
        rows = self._fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
        if not rows:
            return rows
        text = str(rows[0][0])
        if not text.isdigit():  # edited by hand: say so, never crash on it
            raise AuditTampered(f"audit store {self.location} has schema version {text[:40]!r}, which is not a "
                                "version: the store was edited", hint="restore it from a backup or an export")
        if int(text) > SCHEMA_VERSION:
            raise AuditError(
                f"audit store {self.location} has schema version {text}, newer than this "
                f"technician-ops understands ({SCHEMA_VERSION})", hint="upgrade technician-ops")
        return rows

    # --- writing ---------------------------------------------------------------------
    def start_run(self, header: dict[str, Any]) -> None:
        """Record that a run started.  ``started_at`` is normalised to UTC ``...Z``."""
        for key in ("run_id", "runbook", "started_at"):
            if not header.get(key):
                raise AuditError(f"audit header is missing {key!r}")
        header = dict(header)
        header["run_id"] = str(header["run_id"]).lower()
        header["started_at"] = iso_utc(header["started_at"])
        header["check"] = bool(header.get("check", False))
        operator = header.get("operator") or {}
        origin = header.get("origin") or {}
        pid = os.getpid()  # the process whose death interrupts the run is the writer
        row = (header["run_id"], str(header["runbook"]), str(header.get("path") or ""), header["started_at"],
               Outcome.RUNNING.value, int(header["check"]), operator.get("user"), origin.get("type"),
               self._host, pid, process_identity(pid), _dumps(header))
        with self._lock:
            try:
                self._execute(
                    "INSERT INTO runs (run_id, runbook, path, started_at, outcome, check_run, user_name, "
                    "origin_type, writer_host, writer_pid, writer_start, header) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            except Exception as exc:
                if self._is_unique_violation(exc):
                    raise AuditError(f"run {header['run_id']} is already recorded in {self.location}") from None
                raise self._wrap(exc, "record the start of a run") from exc
            self._next_n[header["run_id"]] = 0

    def append(self, run_id: str, event: Event) -> None:
        """Add one event to a running run: one INSERT, one transaction."""
        self.append_many(run_id, (event,))

    def append_many(self, run_id: str, events: Sequence[Event]) -> None:
        """Add events to a running run, in order, in ONE write transaction.

        One commit, so one fsync for the whole group: this is what lets
        ``AuditSink`` group-commit.  All or nothing: if any event cannot be
        written, none of the group is, and the error is an ``AuditError``.

        Numbering is exactly that of consecutive ``append`` calls: each event
        takes the next ``n``; if that number is already taken (another
        connection appended to this run since we last looked), ``MAX(n)`` is
        read again, inside the same transaction, and the event takes the
        number after it; taken a second time is an error.
        """
        rows = [(event.kind.value if isinstance(event.kind, enum.Enum) else str(event.kind), float(event.ts),
                 _dumps(event.data)) for event in events]  # serialized before the lock is taken
        if not rows:
            return
        with self._lock:
            try:
                with self._write_tx():
                    n = self._next_n.get(run_id)
                    if n is None:
                        n = self._load_next_n(run_id)
                    for kind, ts, data in rows:
                        n = self._insert_event(run_id, n, kind, ts, data)
                        n += 1
            except AuditError:
                self._next_n.pop(run_id, None)
                raise
            except Exception as exc:
                # Rolled back: the cached number may be stale; the next call reads it again.
                self._next_n.pop(run_id, None)
                raise self._wrap(exc, f"append {_count(len(rows), 'event')} to run {run_id}") from exc
            self._next_n[run_id] = n

    def _insert_event(self, run_id: str, n: int, kind: str, ts: float, data: str) -> int:
        """Insert one event at ``n``, or after a re-read of ``MAX(n)`` if ``n`` is taken; return its number.

        ``ON CONFLICT DO NOTHING`` (SQLite 3.24+, PostgreSQL 9.5+) reports a
        taken number as zero rows instead of an error, so the transaction
        stays usable on PostgreSQL (where any error aborts it) and the rest of
        the group can still be written in it.
        """
        sql = ("INSERT INTO events (run_id, n, kind, ts, data) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (run_id, n) DO NOTHING")
        if self._execute(sql, (run_id, n, kind, ts, data)) == 1:
            return n
        n = self._load_next_n(run_id)  # someone else appended: re-read
        if self._execute(sql, (run_id, n, kind, ts, data)) == 1:
            return n
        raise AuditError(f"audit store {self.location}: cannot append an event to run {run_id}: event number "
                         f"{n} was taken twice while writing it (another writer is appending to this run)")

    def _load_next_n(self, run_id: str) -> int:
        rows = self._fetchall("SELECT outcome FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise AuditError(f"cannot append to run {run_id}: no such run in {self.location}")
        if rows[0][0] != Outcome.RUNNING.value:
            raise AuditError(f"cannot append to run {run_id}: it is already finished ({rows[0][0]})")
        last = self._fetchall("SELECT MAX(n) FROM events WHERE run_id = ?", (run_id,))[0][0]
        return 0 if last is None else int(last) + 1

    def finish(self, run_id: str, outcome: str, ended_at: str | None = None) -> dict[str, Any]:
        """Fold, chain and return the final record.  Idempotent: a finished run is returned as is."""
        return self._finalize(run_id, _outcome(outcome), ended_at, None)

    def record_skipped(self, header: dict[str, Any], reason: str, outcome: str = "skipped") -> dict[str, Any]:
        """A run that never started (lock held -> ``skipped``; invalid/refused -> ``refused``; an unattended
        start of a runbook with an approve step -> ``awaiting_approval``, its request saved in the header)."""
        outcome = _outcome(outcome)
        if outcome not in NOT_STARTED:
            raise AuditError(f"record_skipped outcome must be one of {', '.join(NOT_STARTED)}, not {outcome!r}")
        self.start_run(header)
        return self._finalize(str(header["run_id"]).lower(), outcome, header["started_at"], reason)

    def claim_release(self, held_run_id: str, run_id: str, user: str) -> dict[str, Any] | None:
        """Claim the release of a held run for ``run_id``: None when this call claimed it, else the claim
        that holds it ({run_id, released_by, released_at}).  Atomic across processes and controllers."""
        held = str(held_run_id).lower()
        with self._lock:
            try:
                with self._write_tx():
                    claimed = self._execute(
                        "INSERT INTO releases (held_run_id, run_id, released_by, released_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (held_run_id) DO NOTHING", (held, str(run_id).lower(), str(user), iso_utc()))
                    if claimed == 1:
                        return None
                    rows = self._fetchall("SELECT run_id, released_by, released_at FROM releases "
                                          "WHERE held_run_id = ?", (held,))
            except Exception as exc:
                raise self._wrap(exc, f"claim the release of run {held}") from exc
        if not rows:  # dropped between the two statements: say so rather than guess
            raise AuditError(f"the release of run {held} changed while it was claimed: try again")
        return {"run_id": rows[0][0], "released_by": rows[0][1], "released_at": rows[0][2]}

    def drop_release(self, held_run_id: str, run_id: str) -> None:
        """Give up ``run_id``'s claim (its run was refused or skipped before anything ran)."""
        with self._lock:
            try:
                self._execute("DELETE FROM releases WHERE held_run_id = ? AND run_id = ?",
                              (str(held_run_id).lower(), str(run_id).lower()))
            except Exception as exc:
                raise self._wrap(exc, f"drop the release claim of run {held_run_id}") from exc

    def _finalize(self, run_id: str, outcome: str | None, ended_at: str | None, reason: str | None,
                  reaped: bool = False) -> dict[str, Any]:
        with self._lock:
            try:
                with self._write_tx():
                    head = self._fetchall("SELECT seq, hash FROM chain_head WHERE id = 1" + self._head_lock_suffix)
                    rows = self._fetchall("SELECT header, seq, record, prev_hash, hash, outcome FROM runs "
                                          "WHERE run_id = ?", (run_id,))
                    if not rows:
                        raise NotFound(f"no run {run_id} in the audit store {self.location}")
                    header_text, seq, body_text, prev_hash, digest, current = rows[0]
                    if seq is not None:
                        return _with_links(body_text, prev_hash, digest)
                    if reaped and current != Outcome.RUNNING.value:
                        return _with_links(body_text, prev_hash, digest) if body_text else {}
                    if not head:
                        raise AuditTampered(f"audit store {self.location} has no chain head row: it was "
                                            "tampered with; run 'technician-ops audit verify'")
                    events = self._events(run_id)
                    record = fold(json.loads(header_text), events)
                    # The events are folded into the record: their digest goes in with it, and the
                    # rows go, so no row outside the hash chain is left for a command to show.
                    record["events_sha256"] = events_digest(events)
                    if reaped:
                        ran_to_end = record["outcome"] in FINAL_OUTCOMES
                        outcome = record["outcome"] if ran_to_end else Outcome.INTERRUPTED.value
                        record["reaped"] = {"at": iso_utc(), "by_host": self._host, "by_pid": os.getpid()}
                    assert outcome is not None
                    finalize(record, outcome, ended_at, reason)
                    new_seq = int(head[0][0]) + 1
                    record["seq"] = new_seq
                    body = canonical_json(record)
                    new_hash = chain_hash(head[0][1], body)
                    self._execute("UPDATE runs SET outcome = ?, ended_at = ?, seq = ?, prev_hash = ?, hash = ?, "
                                  "record = ? WHERE run_id = ?",
                                  (record["outcome"], record["ended_at"], new_seq, head[0][1], new_hash, body, run_id))
                    self._execute("UPDATE chain_head SET seq = ?, hash = ?, run_id = ? WHERE id = 1",
                                  (new_seq, new_hash, run_id))
                    self._execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            except (NotFound, AuditError, AuditTampered):
                raise
            except Exception as exc:
                raise self._wrap(exc, f"finish run {run_id}") from exc
            self._next_n.pop(run_id, None)
        return {**record, "prev_hash": head[0][1], "hash": new_hash}

    def _events(self, run_id: str) -> list[tuple[str, dict[str, Any], float]]:
        return [(kind, json.loads(data), float(ts)) for kind, data, ts in
                self._fetchall("SELECT kind, data, ts FROM events WHERE run_id = ? ORDER BY n", (run_id,))]

    def reap_stale(self) -> list[str]:
        """Finalize runs left ``running`` by a dead writer on this host; return their ids.

        Runs written from other hosts are never touched: only that host can
        tell whether its process is gone.
        """
        with self._lock:
            rows = self._fetchall("SELECT run_id, writer_pid, writer_start FROM runs "
                                  "WHERE outcome = 'running' AND writer_host = ?", (self._host,))
        reaped = []
        for run_id, pid, identity in rows:
            if pid_alive(int(pid), identity):
                continue
            reason = f"writer process {pid} on {self._host} died without finishing the record"
            try:
                rec = self._finalize(run_id, None, None, reason, reaped=True)
            except (AuditTampered, NotFound):
                raise
            except Exception:  # noqa: BLE001 - one unreadable record must not make the store unusable
                self.unreapable.append(run_id)  # left 'running'; 'audit verify' and 'show' still name it
                continue
            if rec:
                reaped.append(run_id)
        return reaped

    # --- reading ---------------------------------------------------------------------
    def get(self, run_id_or_unique_prefix: str) -> dict[str, Any]:
        """The full record of one run (folded live if it is still running)."""
        key = (run_id_or_unique_prefix or "").strip().lower()
        if not key or not set(key) <= _RUN_ID_CHARS:
            raise NotFound(f"{run_id_or_unique_prefix!r} is not a run id")
        cols = "run_id, header, seq, record, prev_hash, hash"
        with self._lock:
            rows = self._fetchall(f"SELECT {cols} FROM runs WHERE run_id = ?", (key,))
            if not rows:
                # '~' sorts after every hex digit and '-': a range scan on the primary key.
                rows = self._fetchall(f"SELECT {cols} FROM runs WHERE run_id >= ? AND run_id < ? "
                                      "ORDER BY run_id LIMIT 2", (key, key + "~"))
            if not rows:
                raise NotFound(f"no run {run_id_or_unique_prefix!r} in the audit store",
                               hint="'technician-ops history' lists recent runs")
            if len(rows) > 1:
                raise NotFound(f"run id prefix {run_id_or_unique_prefix!r} is ambiguous",
                               hint="type more characters of the run id")
            run_id, header_text, seq, body_text, prev_hash, digest = rows[0]
            if seq is not None:
                return _with_links(body_text, prev_hash, digest)
            record = fold(json.loads(header_text), self._events(run_id))
            if body_text is None:
                record.update({"seq": None, "prev_hash": None, "hash": None})
            return record

    def history(self, runbook: str | None = None, limit: int = 50, outcome: str | None = None,
                since: _dt.datetime | None = None, controller: str | None = None) -> list[dict[str, Any]]:
        """Newest first, from the summary columns (index-ordered) and a few fields of each record.

        Once a run is sealed, who ran it, where from and on which controller and nodes come from its hashed
        record, not from the columns beside it (verify does not cover those): an edited column cannot forge
        history.  A running run's come from its header, read here (a header that is not JSON, however it got
        there, must not break ``history``).  Records older than ``controller`` name the operator's host.
        """
        limit = max(int(limit), 0)
        where: list[str] = []
        params: list[Any] = []
        if runbook:
            where.append("runbook = ?")
            params.append(runbook)
        if outcome:
            where.append("outcome = ?")
            params.append(_outcome(outcome, allow_running=True))
        if since is not None:
            where.append("started_at >= ?")
            params.append(iso_utc(since))
        cols = "run_id, runbook, outcome, started_at, ended_at, check_run, seq"
        ctl = f"COALESCE({self._json_sql('controller', 'name')}, {self._json_sql('operator', 'host')})"
        sealed_where = [*where, "seq IS NOT NULL", *([f"{ctl} = ?"] if controller else [])]
        sealed_sql = (f"SELECT {cols}, {self._json_sql('operator', 'user')}, {self._json_sql('origin', 'type')}, {ctl}, "
                      f"{self._json_sql('execution_nodes')} FROM runs WHERE {' AND '.join(sealed_where)} "
                      "ORDER BY started_at DESC, run_id DESC LIMIT ?")
        running_sql = (f"SELECT {cols}, user_name, origin_type, header FROM runs WHERE "
                       f"{' AND '.join([*where, 'seq IS NULL'])} ORDER BY started_at DESC, run_id DESC")
        with self._lock:
            sealed = self._fetchall(sealed_sql, [*params, *([controller] if controller else []), limit])
            running = self._fetchall(running_sql, params)
        rows = [_history_row(r[:7], r[7], r[8], r[9], r[10]) for r in sealed]
        for r in running:
            name, nodes = _header_places(r[9])
            if controller is None or name == controller:
                rows.append(_history_row(r[:7], r[7], r[8], name, nodes))
        rows.sort(key=lambda row: (row["started_at"], row["run_id"]), reverse=True)
        return rows[:limit]

    def run_rows(self, runbook: str | None = None, since: _dt.datetime | None = None) -> list[RunRow]:
        """Every run (of ``runbook``; started at or after ``since``), oldest first within each runbook.

        For ``stats``: the summary columns (which ``verify`` checks against each sealed body), read in
        one snapshot as a stream, plus one field parsed out of a body only where it is needed: when an
        ``interrupted`` run was finished by ``reap_stale`` (``reaped.at``), its ``ended_at`` is when
        the reaper noticed, not when the run stopped.
        """
        where: list[str] = []
        params: list[Any] = []
        if runbook:
            where.append("runbook = ?")
            params.append(runbook)
        if since is not None:
            where.append("started_at >= ?")
            params.append(iso_utc(since))
        reaped = self._json_sql("reaped", "at")
        sql = (f"SELECT run_id, runbook, outcome, started_at, ended_at, check_run, CASE WHEN outcome = 'interrupted' "
               f"AND seq IS NOT NULL THEN {reaped} END FROM runs")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY runbook, started_at, run_id"
        with self._lock, self._read_tx():
            return [RunRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6] is not None)
                    for r in self._stream(sql, params)]

    def head(self) -> tuple[int, str, str | None]:
        """The chain head: (seq, hash, run id) of the newest sealed record (0, GENESIS, None when empty)."""
        with self._lock:
            rows = self._fetchall("SELECT seq, hash, run_id FROM chain_head WHERE id = 1")
        if not rows:
            raise AuditTampered(f"audit store {self.location} has no chain head row: it was tampered with")
        return int(rows[0][0]), str(rows[0][1]), rows[0][2]

    def sealed(self, seq: int) -> tuple[str, str] | None:
        """(hash, run id) of the record sealed at ``seq``, or None."""
        with self._lock:
            rows = self._fetchall("SELECT hash, run_id FROM runs WHERE seq = ?", (int(seq),))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def verify(self) -> "VerifyResult":
        """Walk the whole chain once; report the first edited/deleted/inserted/reordered record."""
        with self._lock:
            try:
                return self._verify(fast=True)
            except (AuditError, AuditTampered):
                raise
            except Exception:
                # The database's JSON code refused a body (it was edited into
                # invalid JSON): walk again, parsing in Python, to name the record.
                return self._verify(fast=False)

    def _verify(self, fast: bool) -> "VerifyResult":
        with self._read_tx():
            head_rows = self._fetchall("SELECT seq, hash, run_id FROM chain_head WHERE id = 1")
            head = (int(head_rows[0][0]), head_rows[0][1], head_rows[0][2]) if head_rows else None
            head_seq = head[0] if head else None
            walker = ChainWalker(head_seq)
            if not (fast and self._walk_beside_body_check(walker, head_seq)):
                walker = ChainWalker(head_seq)
                brk = self._walk(walker, fast)
                if brk is not None:
                    seq, run_id, reason = brk.seq, brk.run_id, brk.reason
                    if brk.link_broken:
                        found = self._fetchall("SELECT seq, run_id FROM runs WHERE hash = ? AND seq IS NOT NULL",
                                               (brk.wanted_prev,))
                        seq, run_id, reason = explain_link(brk, int(found[0][0]) if found else None,
                                                           found[0][1] if found else None, walker.prev_run_id)
                    return VerifyResult(False, walker.checked, run_id, seq, reason)
            stray = self._fetchall("SELECT run_id FROM runs WHERE seq IS NULL AND outcome <> 'running' "
                                   "ORDER BY run_id LIMIT 1")
            if stray:
                return VerifyResult(False, walker.checked, stray[0][0], None,
                                    "a finished record is outside the chain (its seq was removed)")
            # A sealed run's events were folded into its hashed record and deleted with the seal
            # (``_finalize``): any row left for one was put there afterwards.
            planted = self._fetchall("SELECT e.run_id, r.seq FROM events e JOIN runs r ON r.run_id = e.run_id "
                                     "WHERE r.seq IS NOT NULL ORDER BY r.seq LIMIT 1")
            if planted:
                return VerifyResult(False, walker.checked, planted[0][0], int(planted[0][1]),
                                    "the events table holds rows for this sealed run: they were added after its "
                                    "record was hashed")
            return finish_walk(walker, head)

    def _walk(self, walker: ChainWalker, fast: bool) -> ChainBreak | None:
        """One pass over the chain on this connection; the first break, or None."""
        sql = self._chain_sql() if fast else f"SELECT {_CHAIN_COLS} FROM runs WHERE seq IS NOT NULL ORDER BY seq"
        for r in self._stream(sql):
            try:
                if len(r) == 11 and r[10] == 1:  # SQLite confirmed the body fields: links and hash only
                    walker.feed_verified(int(r[0]), r[1], r[2] or "", r[3] or "", r[4] or "")
                else:
                    walker.feed(_chain_row(r))
            except ChainBreak as exc:
                return exc
        return None

    def _walk_beside_body_check(self, walker: ChainWalker, head_seq: int | None) -> bool:
        """The fast walk split in two, run at once; True when every record checked out.

        The database matches each body's summary fields to its columns on a
        second connection, as one statement (SQLite runs all of it without
        the GIL), while this thread checks the links and hashes.  Neither
        half is shorter than before, but they overlap: ``verify`` of 100,000
        records went from ~1.0 s to ~0.6 s on 2 cores (issue 9).  Anything either
        half finds, and a backend without a second connection, returns False:
        the single walk then runs and names the first bad record.

        The second connection reads its own snapshot.  It sees the same
        records up to this snapshot's chain head: the store never changes a
        record once it has a seq, and later ones are past the head.
        """
        check = self._start_body_check(self._body_check_sql(), (head_seq or 0,))
        if check is None:
            return False
        try:
            for seq, run_id, prev_hash, digest, body in self._stream(
                    "SELECT seq, run_id, prev_hash, hash, record FROM runs WHERE seq IS NOT NULL ORDER BY seq"):
                walker.feed_verified(int(seq), run_id, prev_hash or "", digest or "", body or "")
        except ChainBreak:
            check.cancel()
            return False
        except BaseException:
            check.cancel()
            raise
        return not check.result()

    def _body_match_sql(self) -> str:
        """True when a body's summary fields equal its row's columns, compared by the database.

        One json_extract with several paths parses the body once (SQLite
        before 3.45 has no JSON parse cache) into a small JSON array, and the
        database compares it, as text, with the same array built from the
        columns.  Parsing that array in Python for every row was a third of
        ``verify`` (issue 9).  Equal text means equal values; a row whose
        texts differ for a harmless reason (a number stored as ``1`` for
        ``true``, an escape written differently) is not confirmed and is
        checked in Python, field by field, which also words the reason when
        it is real.
        """
        paths = ", ".join(f"'$.{f}'" for f in _BODY_FIELDS)
        expected = ("json_array(seq, run_id, runbook, outcome, started_at, ended_at, "
                    "CASE WHEN check_run THEN json('true') ELSE json('false') END)")  # constants: evaluated once
        return f"json_extract(record, {paths}) = {expected}"

    def _chain_sql(self) -> str:
        """Chain rows plus one flag: 1 when the database confirmed the body fields (``_body_match_sql``)."""
        return f"SELECT {_CHAIN_COLS}, {self._body_match_sql()} FROM runs WHERE seq IS NOT NULL ORDER BY seq"

    def _body_check_sql(self) -> str:
        """The seqs, up to the chain head (the one parameter), whose body fields the database cannot confirm."""
        return (f"SELECT seq FROM runs WHERE seq BETWEEN 1 AND ? AND ({self._body_match_sql()}) IS NOT 1 "
                "ORDER BY seq")

    def export_jsonl(self, fp: TextIO) -> int:
        """Write finalized records in chain order, one canonical JSON object per line."""
        count = 0
        with self._lock, self._read_tx():
            for body_text, prev_hash, digest in self._stream(
                    "SELECT record, prev_hash, hash FROM runs WHERE seq IS NOT NULL ORDER BY seq"):
                fp.write(canonical_json(_with_links(body_text, prev_hash, digest)))
                fp.write("\n")
                count += 1
        return count

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wrap(self, exc: BaseException, doing: str) -> AuditError:
        return AuditError(f"audit store {self.location}: cannot {doing}: {exc}")


def events_digest(events: Sequence[tuple[str, dict[str, Any], float]]) -> str:
    """sha256 over the canonical JSON of a run's events, in order: what the sealed record was folded from."""
    import hashlib

    digest = hashlib.sha256()
    for kind, data, ts in events:
        digest.update(canonical_json([kind, data, ts]).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _as_bool(value: Any) -> Any:
    # SQLite's json_extract gives 1/0 for true/false, PostgreSQL's ->> gives 'true'/'false'.
    if value in (1, "true") and value is not True:
        return True
    if value in (0, "false") and value is not False:
        return False
    return value


def _chain_row(r: Sequence[Any]) -> ChainRow:
    columns = {"runbook": r[5], "outcome": r[6], "started_at": r[7], "ended_at": r[8], "check": bool(r[9])}
    if len(r) <= 11:  # slow path (or a row SQLite could not confirm): the walker parses the body itself
        return ChainRow(int(r[0]), r[1], r[2] or "", r[3] or "", r[4] or "", columns)
    seq_text = r[10]
    try:
        body_seq: Any = int(seq_text) if seq_text is not None else None
    except (TypeError, ValueError):
        body_seq = seq_text
    fields = {"seq": body_seq, "run_id": r[11], "runbook": r[12], "outcome": r[13], "started_at": r[14],
              "ended_at": r[15], "check": _as_bool(r[16])}
    return ChainRow(int(r[0]), r[1], r[2] or "", r[3] or "", r[4] or "", columns, fields)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _with_links(body_text: str, prev_hash: str, digest: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(body_text)
    record["prev_hash"] = prev_hash
    record["hash"] = digest
    return record


def _outcome(value: str | Outcome, allow_running: bool = False) -> str:
    text = value.value if isinstance(value, Outcome) else str(value)
    if text in FINAL_OUTCOMES or (allow_running and text == Outcome.RUNNING.value):
        return text
    raise AuditError(f"unknown run outcome {text!r}; expected one of {', '.join(sorted(FINAL_OUTCOMES))}")


def _history_row(cols: Sequence[Any], user: Any, origin: Any, controller: Any, nodes: Any) -> dict[str, Any]:
    return {"run_id": cols[0], "runbook": cols[1], "outcome": cols[2], "started_at": cols[3], "ended_at": cols[4],
            "user": user, "origin": origin, "check": bool(cols[5]), "seq": cols[6], "controller": controller,
            "nodes": str(nodes).split(",") if nodes else []}


def _header_places(text: Any) -> tuple[str | None, str | None]:
    """(controller name, execution nodes) a running run's header names; (None, None) from one that is no JSON."""
    try:
        header = json.loads(text)
    except (TypeError, ValueError):
        return None, None
    if not isinstance(header, dict):
        return None, None
    ctl, op = header.get("controller"), header.get("operator")
    name = (ctl.get("name") if isinstance(ctl, dict) else None) or (op.get("host") if isinstance(op, dict) else None)
    nodes = header.get("execution_nodes")
    return (str(name) if name else None), (str(nodes) if isinstance(nodes, str) and nodes else None)
