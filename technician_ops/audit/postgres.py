"""The team store: PostgreSQL via ``postgresql://`` URL, psycopg 3.

Same tables and the same ``AuditStore`` logic as SQLite; only transactions
differ.  Finalization locks the one chain-head row (``SELECT ... FOR
UPDATE``), which serializes every controller that shares the database, and
verify/export read in one REPEATABLE READ snapshot through a server-side
cursor so a 100k-record walk streams instead of loading everything.
"""

from __future__ import annotations

import itertools
import re
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from technician_ops.errors import AuditError, AuditUnavailable

from technician_ops.audit.store import AuditStore

CONNECT_TIMEOUT_S = 10
# Serializes concurrent first-time schema creation (CREATE ... IF NOT EXISTS
# races in PostgreSQL); an arbitrary constant private to technician-ops.
_SCHEMA_LOCK_KEY = 0x7EC0_A0D1
_cursor_ids = itertools.count()


def redact_url(url: str) -> str:
    """The URL without its password, for messages and ``location``."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


_REFUSALS = ("password authentication failed", "authentication failed", "does not exist", "no pg_hba.conf entry",
             "permission denied", "invalid", "sslmode")


def _refused_us(message: str) -> bool:
    """Whether PostgreSQL answered and refused these credentials (as opposed to not answering)."""
    low = message.lower()
    return any(word in low for word in _REFUSALS)


class PostgresStore(AuditStore):
    """Audit store in a PostgreSQL database (15+)."""

    _head_lock_suffix = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.location = redact_url(url)
        try:
            import psycopg
        except ImportError as exc:
            raise AuditError("a postgresql:// audit store needs psycopg 3",
                             hint="pip install 'technician-ops[postgres]'") from exc
        self._psycopg = psycopg
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            # psycopg messages can echo connection parameters: keep only the first line,
            # and never the URL itself (it may hold a password).
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if _refused_us(first):  # a wrong password, role or database: fix the configuration (78)
                raise AuditError(f"cannot connect to the audit store {self.location}: {first}",
                                 hint="check the URL's user, password and database") from None
            # down, unreachable, starting up, too many clients: retry later (75)
            raise AuditUnavailable(f"cannot connect to the audit store {self.location}: {first}",
                                        hint="is PostgreSQL up? nothing ran; retry when it answers") from None
        try:
            self._init_schema()
        except psycopg.Error as exc:
            self._conn.close()
            raise AuditError(f"cannot prepare the audit store {self.location}: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    def _init_schema(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            super()._init_schema()

    def _chain_sql(self) -> str:
        # Parse each body once (jsonb) and read the fields from it.
        extracted = ", ".join(f"j ->> '{f}'" for f in ("seq", "run_id", "runbook", "outcome", "started_at",
                                                        "ended_at", "check"))
        return (f"SELECT seq, run_id, prev_hash, hash, record, runbook, outcome, started_at, ended_at, "
                f"check_run, {extracted} FROM (SELECT *, record::jsonb AS j FROM runs "
                "WHERE seq IS NOT NULL) AS chained ORDER BY seq")

    def _json_sql(self, *keys: str) -> str:
        path = "".join(f" -> '{k}'" for k in keys[:-1])
        return f"(record::jsonb{path} ->> '{keys[-1]}')"

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(self._sql(sql), tuple(params)).rowcount

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(self._sql(sql), tuple(params)).fetchall()

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self._conn.cursor(name=f"audit_stream_{next(_cursor_ids)}") as cur:
            cur.itersize = 2000
            cur.execute(self._sql(sql), tuple(params))
            yield from cur

    @contextmanager
    def _write_tx(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    @contextmanager
    def _read_tx(self) -> Iterator[None]:
        with self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

    def _close(self) -> None:
        self._conn.close()
