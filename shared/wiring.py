"""The service's wiring, built in one place: Redis connection, status index, queue, budget."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from shared.index import StatusIndex
from shared.queue import MemoryBudget, TrackedQueue
from shared.redis import connect
from shared.settings import Settings


@dataclass(frozen=True)
class Services:
    """The settings, Redis connection, status index, queue and memory budget one process shares."""

    settings: Settings
    redis: Redis
    index: StatusIndex
    queue: TrackedQueue
    # What the submission gate admits against Redis's maxmemory.
    budget: MemoryBudget


def build_services(settings: Settings, connection: Redis | None = None) -> Services:
    """Return the services for `settings`, on `connection` or a new connection pool."""
    redis = connection if connection is not None else connect(settings)
    index = StatusIndex(redis, settings.retention_seconds)
    queue = TrackedQueue(settings.queue_name, connection=redis)
    budget = MemoryBudget(settings.submit_memory_percent, settings.max_result_bytes)
    return Services(settings, redis, index, queue, budget)
