"""Webhook deliveries as both sides see them: the policy a job carries, the delivery job its end
queues, and the delivery state the single-job status shows.

A job submitted with a `webhook_url` carries its delivery policy in its meta. Each time it ends
(done, failed, canceled), `TrackedJob.set_status` saves a delivery job, a plain RQ job on the
queue "<queue>:webhooks", in the very MULTI that records the end; the record script queues it
only if the end is new (shared/index.py). A worker runs it (worker/webhooks.py), retried by RQ
with backoff; its progress is kept in the delivery state hash (`keys.delivery_state_key`).
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.utils import now

from shared import keys
from shared.index import Delivery
from shared.status import from_rq

# The delivery function, named by every delivery job; only the worker imports it.
DELIVER = "worker.webhooks.deliver"
# The longest pause between two tries, however many there are.
MAX_BACKOFF_SECONDS = 3600
# How delivery tries end, each counted in the outcomes hash (`keys.deliveries_key`, /metrics).
OUTCOMES = ("delivered", "failed", "gave_up", "gone", "refused")
# The state hash's fields that hold numbers and times (the rest are words).
STATE_INTS = ("attempts", "last_status")
STATE_TIMES = ("delivered_at", "next_attempt_at")


@dataclass(frozen=True)
class WebhookPolicy:
    """Where a job's ends are delivered, and how: tries, backoff, timeout, how long state lives."""

    url: str
    max_attempts: int
    backoff_seconds: int
    timeout_seconds: float
    retention_seconds: int

    def as_meta(self) -> dict[str, Any]:
        """Return the policy as the job's meta keeps it."""
        return {
            "url": self.url,
            "max_attempts": self.max_attempts,
            "backoff_seconds": self.backoff_seconds,
            "timeout_seconds": self.timeout_seconds,
            "retention_seconds": self.retention_seconds,
        }

    @classmethod
    def of(cls, job: Job) -> WebhookPolicy | None:
        """Return the policy `job` carries, or None when it has no webhook."""
        meta = (job.meta or {}).get("webhook")
        if not isinstance(meta, dict):
            return None
        return cls(
            url=str(meta["url"]),
            max_attempts=int(meta["max_attempts"]),
            backoff_seconds=int(meta["backoff_seconds"]),
            timeout_seconds=float(meta["timeout_seconds"]),
            retention_seconds=int(meta["retention_seconds"]),
        )

    def intervals(self, rng: random.Random | None = None) -> list[int]:
        """Return the intervals (s) RQ is given before tries 2..max_attempts.

        The pause before try n+1 is drawn between half and all of backoff * 2^(n-1) ("equal
        jitter"), so that the deliveries of jobs that failed together do not all come back
        together. RQ's scheduler counts whole seconds, rounding the due time down: each interval
        is the pause rounded up, plus one second, so that no try comes before its pause is over.
        """
        pick = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        pauses = []
        for n in range(self.max_attempts - 1):
            full = min(self.backoff_seconds * 2**n, MAX_BACKOFF_SECONDS)
            pauses.append(math.ceil(full / 2 + pick.uniform(0, full / 2)) + 1)
        return pauses

    @property
    def attempt_seconds(self) -> int:
        """Return the longest one try may take: connect, send and read, with room to spare."""
        return math.ceil(3 * self.timeout_seconds) + 10


def new_delivery(job: Job, policy: WebhookPolicy, pipeline: Pipeline) -> Delivery:
    """Save (in `pipeline`) a delivery job for the end `job` is reaching; return what the record
    script needs to queue it, or delete it should the end not be new."""
    queue = Queue(keys.webhook_queue_name(job.origin), connection=job.connection)
    intervals = policy.intervals()
    delivery = Job.create(
        DELIVER,
        args=(job.id, from_rq(job.get_status(refresh=False)).value),
        connection=job.connection,
        id=f"webhook-{uuid.uuid4().hex}",
        timeout=policy.attempt_seconds,
        result_ttl=policy.retention_seconds,
        failure_ttl=policy.retention_seconds,
        retry=Retry(max=policy.max_attempts - 1, interval=intervals) if intervals else None,
        description=f"webhook for job {job.id}",
        origin=queue.name,
        meta={"job_id": job.id},
    )
    # What RQ's enqueue sets; the record script pushes the id, so that an end recorded twice
    # is delivered once.
    delivery.enqueued_at = now()
    delivery._status = JobStatus.QUEUED
    delivery.save(pipeline=pipeline)
    pipeline.sadd(Queue.redis_queues_keys, queue.key)
    return Delivery(queue.key, delivery.id, delivery.key, policy.retention_seconds)


# A try that ends without reporting (its work-horse killed: the worker died, or RQ's job
# timeout) leaves the state "delivering"; when RQ then retries the delivery job (ARGV[2]
# "retrying") or fails it for good ("gave_up"), count the lost try as failed and say so.
# KEYS: the delivery state hash, the outcomes hash. ARGV: delivery job id, state, error.
SETTLE_LUA = """
if redis.call('HGET', KEYS[1], 'delivery') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'delivering' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'last_error', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'failed', 1)
if ARGV[2] == 'gave_up' then redis.call('HINCRBY', KEYS[2], 'gave_up', 1) end
return 1
"""
LOST_TRY = "the try ended without an answer: its worker died, or it ran past its time"


def settle_lost_try(client: Redis | Pipeline, delivery: Job, status: JobStatus) -> None:
    """Record a lost try of `delivery` now that RQ gives it `status` (in `client`'s MULTI)."""
    if status is JobStatus.FAILED:
        outcome = "gave_up"
    elif status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
        outcome = "retrying"
    else:
        return
    job_id = str(delivery.args[0])
    script_keys = [keys.delivery_state_key(job_id), keys.deliveries_key()]
    client.eval(SETTLE_LUA, len(script_keys), *script_keys, delivery.id, outcome, LOST_TRY)


def read_state(connection: Redis, job_id: str) -> dict[str, Any] | None:
    """Return the delivery state of `job_id`'s latest end, or None when none was queued."""
    raw: dict[bytes, bytes] = connection.hgetall(keys.delivery_state_key(job_id))  # type: ignore[assignment]
    return parse_state(raw) if raw else None


def waiting_state() -> dict[str, Any]:
    """Return the delivery state of a job that has not ended yet (no delivery queued)."""
    return {
        "state": "waiting",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
        "next_attempt_at": None,
    }


def parse_state(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """Return the public delivery state from the state hash as HGETALL returns it."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    state = waiting_state()
    state["state"] = fields.get("state")
    state["last_error"] = fields.get("last_error") or None
    for name in STATE_INTS:
        if fields.get(name):
            state[name] = int(fields[name])
    for name in STATE_TIMES:
        if fields.get(name):
            state[name] = iso(float(fields[name]))
    return state


def iso(seconds: float) -> str:
    """Return epoch `seconds` as the API writes times: ISO 8601, UTC, milliseconds."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
