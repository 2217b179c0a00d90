"""What the API reports about Redis: whether it answers, takes writes and has room for jobs.

`/health` and `/metrics` both read it here, so they never disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.queue import MemoryBudget, TrackedQueue

logger = logging.getLogger(__name__)

# The probe key outlives a check by a minute, then goes: it never accumulates.
PROBE_TTL_MS = 60_000


@dataclass(frozen=True)
class RedisHealth:
    """One reading of Redis: writes accepted, memory used and allowed, jobs admitted, waiting."""

    writable: bool
    used_memory: int
    maxmemory: int
    accepting_jobs: bool
    waiting: int


def check(connection: Redis, queue: TrackedQueue, budget: MemoryBudget) -> RedisHealth:
    """Read Redis's memory and write a probe key; raise RedisError when Redis does not answer."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.llen(queue.key)
        pipe.zcard(queue.started_job_registry.key)
        # A write is the only honest test of writes: out of memory (noeviction), a replica,
        # a failed snapshot (MISCONF) all refuse it.
        pipe.set(keys.health_probe_key(), 1, px=PROBE_TTL_MS)
        info, waiting, running, probe = pipe.execute(raise_on_error=False)
    for reply in (info, waiting, running):
        if isinstance(reply, Exception):
            raise reply
    writable = not isinstance(probe, Exception)
    if not writable:
        logger.warning("Redis refuses writes: %s", probe)
    used, maxmemory = int(info["used_memory"]), int(info["maxmemory"])
    # One more job: the next submission, waiting behind those already there.
    admits = budget.admits(used, maxmemory, int(waiting) + int(running) + 1)
    return RedisHealth(
        writable=writable,
        used_memory=used,
        maxmemory=maxmemory,
        accepting_jobs=writable and admits,
        waiting=int(waiting),
    )
