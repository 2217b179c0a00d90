"""The Redis connection, built from settings and passed explicitly; Redis server time."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from shared.settings import Settings

MICROS = 1_000_000


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


def time_micros(reply: tuple[int, int] | list[int]) -> int:
    """Return a Redis TIME reply (seconds, microseconds) as integer microseconds."""
    seconds, micros = reply
    return int(seconds) * MICROS + int(micros)


def redis_time_micros(connection: Redis) -> int:
    """Return the Redis server's clock now, in integer microseconds since the epoch."""
    return time_micros(connection.time())
