"""RQ's registry leases on Redis time, so workers whose clocks differ agree on when one lapses."""

from __future__ import annotations

import logging
import time

import rq.executions
import rq.registry
from redis import Redis

from shared.redis import MICROS, redis_time_micros

logger = logging.getLogger(__name__)

# Beyond this the host's clock is worth a warning: RQ's own timestamps (started_at, the worker
# registry) still come from it, even though leases and the index no longer do.
SKEW_WARNING_SECONDS = 5.0


class RedisClock:
    """The local clock corrected by its measured offset from the Redis server's clock."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self.offset = 0.0

    def sync(self) -> float:
        """Measure and keep the offset of Redis time from local time; return it in seconds."""
        before = time.time()
        now = redis_time_micros(self.connection)
        after = time.time()
        self.offset = now / MICROS - (before + after) / 2
        if abs(self.offset) > SKEW_WARNING_SECONDS:
            logger.warning("this host's clock is %+.1f s off Redis time; run NTP", -self.offset)
        return self.offset

    def timestamp(self) -> int:
        """Return the current Redis time in whole seconds, as RQ's registries score it."""
        return int(time.time() + self.offset)


def use_redis_time(clock: RedisClock) -> None:
    """Make RQ score and sweep job leases in Redis time, in this process and its work-horses."""
    # RQ scores a running job's lease as current_timestamp() + ttl with the running worker's
    # clock, and a sweeping worker compares it with its own: a skew of more than the lease's
    # grace (20 s) would fail healthy jobs. Both modules import the function by name.
    rq.registry.current_timestamp = clock.timestamp  # type: ignore[attr-defined]
    rq.executions.current_timestamp = clock.timestamp  # type: ignore[attr-defined]
