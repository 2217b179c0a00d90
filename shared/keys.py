"""Every Redis key the service owns, under one prefix; RQ's own keys come from RQ."""

from __future__ import annotations

from rq.job import Job
from rq.queue import Queue

from shared.status import Status

PREFIX = "tkj:"
# Bumped when the index layout changes incompatibly; see docs/index-layout.md.
SCHEMA_VERSION = 1


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


def rq_queue_key(queue_name: str) -> str:
    """Return RQ's list key for the waiting jobs of `queue_name`."""
    return f"{Queue.redis_queue_namespace_prefix}{queue_name}"


def rq_job_key(job_id: str) -> str:
    """Return RQ's hash key for `job_id`."""
    return Job.key_for(job_id)
