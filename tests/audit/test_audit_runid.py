"""UUIDv7 run ids: format, uniqueness and sort order."""

from __future__ import annotations

import re
import time
import uuid

from technician_ops.audit import new_run_id
from technician_ops.audit.runid import run_id_timestamp_ms

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_format_is_rfc9562_version_7() -> None:
    rid = new_run_id()
    assert UUID7.match(rid), rid
    parsed = uuid.UUID(rid)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_timestamp_is_now_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    rid = new_run_id()
    after = time.time_ns() // 1_000_000
    # The counter may carry the timestamp a few ms ahead after a burst; never behind.
    assert before <= run_id_timestamp_ms(rid) <= after + 5


def test_burst_is_strictly_increasing_and_unique() -> None:
    ids = [new_run_id() for _ in range(20_000)]  # far more than 4096 per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(a < b for a, b in zip(ids, ids[1:]))


def test_ids_made_later_sort_later() -> None:
    first = new_run_id()
    time.sleep(0.003)
    second = new_run_id()
    assert first < second
    assert run_id_timestamp_ms(second) > run_id_timestamp_ms(first)
