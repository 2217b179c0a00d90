"""Metrics read from Redis at scrape time: queue depths, index sizes, transitions, oldest wait,
webhook deliveries."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError
from rq import Queue

from api.redis_health import RedisHealth, check
from api.request_metrics import PREFIX
from shared import keys
from shared.delivery import OUTCOMES as DELIVERY_OUTCOMES
from shared.index import REPAIR_KINDS, STATUSES, parse_transitions
from shared.queue import MemoryBudget, TrackedQueue
from shared.redis import MICROS, time_micros
from shared.status import Status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisSnapshot:
    """What the metrics read from Redis in one transaction."""

    queue_depths: dict[str, int]
    status_counts: dict[Status, int]
    transitions: dict[tuple[str, str], int]
    oldest_queued_age_seconds: float
    repairs: dict[str, int]
    # Webhook delivery tries by outcome (worker/webhooks.py OUTCOMES).
    deliveries: dict[str, int] = field(default_factory=dict)


def read_snapshot(connection: Redis, queue_name: str) -> RedisSnapshot:
    """Read queue depths, index sizes, transition counts and the oldest waiting job's age."""
    names = {queue.name for queue in Queue.all(connection=connection)} | {queue_name}
    queue_names = sorted(names)
    try:
        replies = _read(connection, queue_names, transaction=True)
    except OutOfMemoryError:
        # Out of memory, Redis refuses every command queued in a MULTI, reads included: read
        # the same without one (the figures may then come from a few microseconds apart).
        replies = _read(connection, queue_names, transaction=False)
    now = time_micros(replies[0])
    counts = replies[1 : 1 + len(STATUSES)]
    oldest, transitions, repairs, deliveries = replies[1 + len(STATUSES) : 5 + len(STATUSES)]
    depths = replies[5 + len(STATUSES) :]
    age = max(0.0, (now - oldest[0][1]) / MICROS) if oldest else 0.0
    return RedisSnapshot(
        queue_depths={name: int(depth) for name, depth in zip(queue_names, depths, strict=True)},
        status_counts={status: int(n) for status, n in zip(STATUSES, counts, strict=True)},
        transitions=parse_transitions(transitions),
        oldest_queued_age_seconds=age,
        repairs={kind.decode(): int(count) for kind, count in repairs.items()},
        deliveries={outcome.decode(): int(count) for outcome, count in deliveries.items()},
    )


def _read(connection: Redis, queue_names: list[str], *, transaction: bool) -> list[Any]:
    with connection.pipeline(transaction=transaction) as pipe:
        pipe.time()
        for status in STATUSES:
            pipe.zcard(keys.status_index_key(status))
        pipe.zrange(keys.status_index_key(Status.QUEUED), 0, 0, withscores=True)
        pipe.hgetall(keys.transitions_key())
        pipe.hgetall(keys.repairs_key())
        pipe.hgetall(keys.deliveries_key())
        for name in queue_names:
            pipe.llen(keys.rq_queue_key(name))
        replies: list[Any] = pipe.execute()
    return replies


def families(snapshot: RedisSnapshot | None, health: RedisHealth | None = None) -> list[Metric]:
    """Return the metric families of a Redis snapshot; None means Redis did not answer."""
    up = GaugeMetricFamily(f"{PREFIX}redis_up", "1 when Redis answered this scrape, else 0.")
    up.add_metric([], 0 if snapshot is None else 1)
    if snapshot is None:
        return [up]
    found = [up, *_health_families(health)] if health is not None else [up]
    depth = GaugeMetricFamily(
        f"{PREFIX}queue_depth", "Jobs waiting in each RQ queue (LLEN).", labels=["queue"]
    )
    for name, count in snapshot.queue_depths.items():
        depth.add_metric([name], count)
    jobs = GaugeMetricFamily(
        f"{PREFIX}indexed_jobs",
        "Jobs in the status index per latest status (within JOB_RETENTION_SECONDS).",
        labels=["status"],
    )
    for status, count in snapshot.status_counts.items():
        jobs.add_metric([status.value], count)
    transitions = CounterMetricFamily(
        f"{PREFIX}transitions",
        'Job status changes recorded by the workers and the API; from is "new" for a new job.',
        labels=["from", "to"],
    )
    for (source, target), count in sorted(snapshot.transitions.items()):
        transitions.add_metric([source, target], count)
    oldest = GaugeMetricFamily(
        f"{PREFIX}oldest_queued_age_seconds",
        "Seconds since the longest-waiting queued job was queued (Redis time); 0 when none.",
    )
    oldest.add_metric([], snapshot.oldest_queued_age_seconds)
    repairs = CounterMetricFamily(
        f"{PREFIX}index_repairs",
        "Index entries the repair pass removed, moved or added because RQ was changed "
        "behind the index's back (docs/reliability.md).",
        labels=["kind"],
    )
    for kind in REPAIR_KINDS:
        repairs.add_metric([kind], snapshot.repairs.get(kind, 0))
    deliveries = CounterMetricFamily(
        f"{PREFIX}webhook_deliveries",
        "Webhook delivery outcomes: delivered (2xx), failed (a try that did not deliver), "
        "gave_up (the last try failed), gone (410: never again), refused (the host resolved to "
        "a non-public address at send time). Waiting deliveries are the queue_depth of "
        '"<queue>:webhooks".',
        labels=["outcome"],
    )
    for outcome in DELIVERY_OUTCOMES:
        deliveries.add_metric([outcome], snapshot.deliveries.get(outcome, 0))
    return [*found, depth, jobs, transitions, oldest, repairs, deliveries]


def _health_families(health: RedisHealth) -> list[Metric]:
    """Return what /health also reads: writes accepted, memory, jobs admitted."""
    writable = GaugeMetricFamily(
        f"{PREFIX}redis_writable",
        "1 when Redis accepted a write this scrape (0: out of memory, read-only or MISCONF; "
        "/health answers 503 then).",
    )
    writable.add_metric([], int(health.writable))
    used = GaugeMetricFamily(f"{PREFIX}redis_used_memory_bytes", "Redis's used_memory.")
    used.add_metric([], health.used_memory)
    limit = GaugeMetricFamily(
        f"{PREFIX}redis_maxmemory_bytes", "Redis's maxmemory (0: none set, nothing protected)."
    )
    limit.add_metric([], health.maxmemory)
    accepting = GaugeMetricFamily(
        f"{PREFIX}accepting_jobs",
        "1 while Redis has room for another small job and the results of those accepted "
        "(SUBMIT_MEMORY_PERCENT, MAX_RESULT_BYTES); 0 while every submission gets 503.",
    )
    accepting.add_metric([], int(health.accepting_jobs))
    return [writable, used, limit, accepting]


class RedisCollector:
    """Collect the Redis-derived metrics at scrape time; Redis down gives redis_up 0 only."""

    def __init__(self, connection: Redis, queue: TrackedQueue, budget: MemoryBudget) -> None:
        self.connection = connection
        self.queue = queue
        self.budget = budget

    def collect(self) -> Iterable[Metric]:
        """Return the Redis-derived metric families, read now."""
        try:
            health: RedisHealth | None = check(self.connection, self.queue, self.budget)
            snapshot: RedisSnapshot | None = read_snapshot(self.connection, self.queue.name)
        except RedisError as exc:
            logger.warning("metrics: Redis unavailable: %s: %s", type(exc).__name__, exc)
            health, snapshot = None, None
        return families(snapshot, health)
