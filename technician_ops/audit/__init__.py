"""The audit store: one tamper-evident record per run (DESIGN.md section 5).

``open_store`` picks the backend from a URL; everything else is the
``AuditStore`` API.  The store consumes ``technician_ops.events.Event``
objects (see ``AuditSink``) and never sees a secret value: parameters arrive
already redacted.
"""

from __future__ import annotations

import os
import pathlib

from technician_ops.errors import AuditError

from technician_ops.audit.chain import VerifyResult, canonical_json, verify_jsonl
from technician_ops.audit.runid import new_run_id
from technician_ops.audit.store import AuditStore

DEFAULT_DIR = ".technician-ops"
DEFAULT_FILE = "audit.db"

__all__ = ["AuditStore", "VerifyResult", "canonical_json", "default_path", "new_run_id", "open_store",
           "verify_jsonl"]


def default_path(project_root: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(project_root) / DEFAULT_DIR / DEFAULT_FILE


def open_store(url: str | None, project_root: pathlib.Path, *, reading: bool = False) -> AuditStore:
    """Open (creating if needed) the audit store, then reap runs whose writer died.

    ``None``/``''``: SQLite at ``<project_root>/.technician-ops/audit.db``;
    ``sqlite:///abs/path.db``: SQLite there; ``postgresql://...``: PostgreSQL.
    ``reading``: a command that only reads (history, show, verify, export) also works on an SQLite
    store this process cannot write: it is opened read-only, and nothing is reaped.
    """
    from technician_ops.audit.sqlite import SqliteStore

    store: AuditStore
    if not url:
        store = _sqlite(default_path(project_root), True, reading)
    elif url.startswith("sqlite://"):
        raw = url[len("sqlite://"):]
        if not raw.startswith("/"):
            raise AuditError(f"audit URL {url!r} must name an absolute path: sqlite:///abs/path/audit.db")
        path = pathlib.Path(raw)
        store = _sqlite(path, not path.parent.exists(), reading)
    elif url.startswith(("postgresql://", "postgres://")):
        from technician_ops.audit.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        scheme = url.split(":", 1)[0] if ":" in url else url
        raise AuditError(f"unsupported audit store URL scheme {scheme!r}",
                         hint="use sqlite:///abs/path.db or postgresql://user@host/db (or leave it unset)")
    if getattr(store, "read_only", False):
        return store
    try:
        store.reap_stale()
    except BaseException:
        store.close()
        raise
    return store


def _sqlite(path: pathlib.Path, private_dir: bool, reading: bool) -> AuditStore:
    from technician_ops.audit.sqlite import SqliteStore

    try:
        return SqliteStore(path, private_dir=private_dir)
    except AuditError:
        if not reading or not path.is_file() or (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
                                                  and not _read_only_fs(path)):
            raise
    return SqliteStore(path, read_only=True)


def _read_only_fs(path: pathlib.Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
