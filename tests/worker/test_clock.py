"""The Redis clock that RQ's leases use in worker processes."""

from __future__ import annotations

import time

import pytest
import redis

from shared.redis import MICROS, redis_time_micros
from worker.clock import RedisClock


def test_the_offset_corrects_a_skewed_local_clock(
    conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the local clock 7 minutes ahead, timestamp() still tells Redis time."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 420)
    clock = RedisClock(conn)
    assert clock.sync() == pytest.approx(-420, abs=1)
    assert abs(clock.timestamp() - redis_time_micros(conn) / MICROS) <= 1


def test_an_unsynced_clock_is_the_local_clock(conn: redis.Redis) -> None:
    """Before its first sync the clock has no offset."""
    clock = RedisClock(conn)
    assert abs(clock.timestamp() - time.time()) <= 1
