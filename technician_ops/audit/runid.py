"""Run ids: UUIDv7 (RFC 9562), built from the standard library only.

Why v7: the id leads with a millisecond Unix timestamp, so ids sort in start
order as plain strings.  That keeps ``history`` and prefix look-ups cheap on a
text primary key, and lets an operator type the first few characters of a
recent run.  Within one millisecond the 12-bit ``rand_a`` field is used as a
counter (RFC 9562 section 6.2, method 1), so ids made by one process are
strictly increasing even when many are made in the same millisecond or the
wall clock steps backwards.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = -1
_counter = 0
_COUNTER_MAX = 0xFFF
# New milliseconds seed the counter in the lower half, leaving room to count up.
_COUNTER_SEED_MAX = 0x7FF


def _uuid7_from(ms: int, counter: int, rand_b: int) -> uuid.UUID:
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= (counter & 0xFFF) << 64
    value |= 0b10 << 62  # RFC 4122/9562 variant
    value |= rand_b & 0x3FFF_FFFF_FFFF_FFFF
    return uuid.UUID(int=value)


def new_run_id() -> str:
    """Return a new UUIDv7 as its canonical lowercase string.

    Strictly increasing within this process (string order == creation order);
    ids from different processes order by millisecond and are unique by their
    62 random bits.
    """
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MAX
        else:
            # Same millisecond, or the clock went backwards: keep counting on
            # the last timestamp so order is preserved.
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms += 1
                _counter = int.from_bytes(os.urandom(2), "big") & _COUNTER_SEED_MAX
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big")
    return str(_uuid7_from(ms, counter, rand_b))


def run_id_timestamp_ms(run_id: str) -> int:
    """The Unix millisecond timestamp a UUIDv7 run id was made at."""
    return uuid.UUID(run_id).int >> 80
