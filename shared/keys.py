"""Every Redis key the service owns, under one prefix; RQ's own keys come from RQ."""

from __future__ import annotations

from rq.job import Job
from rq.queue import Queue

from shared.status import Status

PREFIX = "tkj:"
# Bumped when the index layout changes incompatibly; see docs/index-layout.md.
SCHEMA_VERSION = 1
# The delivery queue of queue "q" is "q:webhooks"; QUEUE_NAME may not end so (settings).
WEBHOOK_QUEUE_SUFFIX = ":webhooks"


def marker_key() -> str:
    """Return the key of the index marker hash (its absence means "no index here")."""
    # The name predates the word "marker"; kept so that a running deployment's layout holds.
    return f"{PREFIX}registry"


def status_index_key(status: Status) -> str:
    """Return the key of the sorted set holding the jobs whose latest status is `status`."""
    return f"{PREFIX}index:{status.value}"


def status_index_keys() -> list[str]:
    """Return the status index keys in `Status` declaration order."""
    return [status_index_key(status) for status in Status]


def clock_key() -> str:
    """Return the key of the index clock: the position (µs) of the latest recorded change."""
    return f"{PREFIX}clock"


def transitions_key() -> str:
    """Return the key of the hash counting state changes, one field per "<from>:<to>"."""
    return f"{PREFIX}transitions"


def repair_lease_key() -> str:
    """Return the key whose presence says a repair pass started within the last interval."""
    return f"{PREFIX}repair:lease"


def repairs_key() -> str:
    """Return the key of the hash counting repaired entries, one field per kind of repair."""
    return f"{PREFIX}repairs"


def health_probe_key() -> str:
    """Return the key /health and /metrics write to learn whether Redis accepts writes."""
    return f"{PREFIX}health:probe"


def job_ended_channel(job_id: str) -> str:
    """Return the pub/sub channel told the status `job_id` ends in (done, failed or canceled)."""
    return f"{PREFIX}ended:{job_id}"


def delivery_state_key(job_id: str) -> str:
    """Return the key of the hash holding the state of the webhook delivery of `job_id`'s end."""
    return f"{PREFIX}webhook:{job_id}"


def deliveries_key() -> str:
    """Return the key of the hash counting webhook delivery attempts, one field per outcome."""
    return f"{PREFIX}webhooks"


def webhook_queue_name(queue_name: str) -> str:
    """Return the name of the RQ queue delivering the webhooks of `queue_name`'s jobs."""
    return f"{queue_name}{WEBHOOK_QUEUE_SUFFIX}"


def is_webhook_queue(queue_name: str) -> bool:
    """Return whether `queue_name` is a webhook delivery queue (its jobs are not in the index)."""
    return queue_name.endswith(WEBHOOK_QUEUE_SUFFIX)


def rq_queue_key(queue_name: str) -> str:
    """Return RQ's list key for the waiting jobs of `queue_name`."""
    return f"{Queue.redis_queue_namespace_prefix}{queue_name}"


def rq_job_key(job_id: str) -> str:
    """Return RQ's hash key for `job_id`."""
    return Job.key_for(job_id)
