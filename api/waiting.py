"""Wait for a job's end on its pub/sub channel, without polling Redis.

The record script publishes each end (done, failed, canceled) on the job's channel in the
transaction that records it (shared/index.py). A waiting request subscribes first, then reads
the job: an end recorded before the subscription is in that read, one recorded after it is a
message. Under gunicorn's gevent worker the wait is a parked greenlet on its own Redis
connection: other requests go on (docs/deployment.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys

# How long one wait for Redis's confirmation of the subscription lasts, before looking again.
CONFIRM_TIMEOUT = 1.0


def wait_for_end(
    connection: Redis, job_id: str, seconds: float, has_ended: Callable[[], bool]
) -> bool:
    """Return whether job `job_id` has ended (`has_ended()`, read once subscribed), waiting up
    to `seconds` for the end to be published."""
    if seconds <= 0:
        return has_ended()
    deadline = time.monotonic() + seconds
    pubsub = connection.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe(keys.job_ended_channel(job_id))
        # The read below goes over another connection: only once Redis has confirmed the
        # subscription can no end fall between the read and the subscription.
        while (confirmed := pubsub.get_message(timeout=CONFIRM_TIMEOUT)) is None:
            if time.monotonic() > deadline:
                raise RedisTimeoutError("Redis did not confirm the subscription")
        if confirmed["type"] == "message" or has_ended():
            return True
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "message":
                return True
        return False
    finally:
        pubsub.close()
