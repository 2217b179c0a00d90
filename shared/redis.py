"""The Redis connection, built from settings and passed explicitly to whoever needs it."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from shared.settings import Settings


def connect(settings: Settings) -> Redis:
    """Return a Redis client whose every call gives up within about `redis_timeout` seconds."""
    # One quick retry on a connection error absorbs a connection dropped while idle (say by
    # a Redis restart). Timeouts are not retried: a retry would double how long a caller
    # waits while Redis hangs. RQ workers add their own backoff on top.
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        retry=Retry(
            ExponentialBackoff(cap=0.2, base=0.05), retries=1, supported_errors=(ConnectionError,)
        ),
    )
