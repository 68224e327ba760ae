"""The audit store: one tamper-evident record per run (DESIGN.md section 5).

``open_store`` picks the backend from a URL; everything else is the
``AuditStore`` API.  The store consumes ``technician_ops.events.Event``
objects (see ``AuditSink``) and never sees a secret value: parameters arrive
already redacted.
"""

from __future__ import annotations

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


def open_store(url: str | None, project_root: pathlib.Path) -> AuditStore:
    """Open (creating if needed) the audit store, then reap runs whose writer died.

    ``None``/``''``: SQLite at ``<project_root>/.technician-ops/audit.db``;
    ``sqlite:///abs/path.db``: SQLite there; ``postgresql://...``: PostgreSQL.
    """
    from technician_ops.audit.sqlite import SqliteStore

    store: AuditStore
    if not url:
        store = SqliteStore(default_path(project_root), private_dir=True)
    elif url.startswith("sqlite://"):
        raw = url[len("sqlite://"):]
        if not raw.startswith("/"):
            raise AuditError(f"audit URL {url!r} must name an absolute path: sqlite:///abs/path/audit.db")
        path = pathlib.Path(raw)
        store = SqliteStore(path, private_dir=not path.parent.exists())
    elif url.startswith(("postgresql://", "postgres://")):
        from technician_ops.audit.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        scheme = url.split(":", 1)[0] if ":" in url else url
        raise AuditError(f"unsupported audit store URL scheme {scheme!r}",
                         hint="use sqlite:///abs/path.db or postgresql://user@host/db (or leave it unset)")
    try:
        store.reap_stale()
    except BaseException:
        store.close()
        raise
    return store
