"""A worker's periodic maintenance trims the status index."""

from __future__ import annotations

from collections.abc import Callable

import redis

from shared import keys
from shared.index import FINAL_STATUSES
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from worker.main import TrackingMixin


def test_worker_maintenance_trims_expired_index_entries(
    conn: redis.Redis, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A worker's maintenance removes final entries older than the retention; others stay."""
    now = redis_time_micros(conn)
    old = now - 2 * 60 * MICROS
    for status in Status:
        conn.zadd(keys.status_index_key(status), {f"old-{status}": old, f"new-{status}": now})
    run_worker(retention_seconds=60)
    for status in Status:
        key = keys.status_index_key(status)
        if status in FINAL_STATUSES:
            assert conn.zscore(key, f"old-{status}") is None, status
        else:
            assert conn.zscore(key, f"old-{status}") is not None, status
        assert conn.zscore(key, f"new-{status}") is not None, status
