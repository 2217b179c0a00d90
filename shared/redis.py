"""The Redis connection, built from settings and passed explicitly; Redis server time."""

from __future__ import annotations

import functools
import select
import sys
from collections.abc import Callable
from typing import Any

from redis import ConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError
from redis.retry import Retry

from shared.settings import Settings

MICROS = 1_000_000


def connect(settings: Settings) -> Redis:
    """Return a Redis client whose every call gives up within about `redis_timeout` seconds."""
    # One quick retry on a connection error absorbs a connection dropped while idle (say by
    # a Redis restart). Timeouts are not retried: a retry would double how long a caller
    # waits while Redis hangs. RQ workers add their own backoff on top.
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        retry=Retry(
            ExponentialBackoff(cap=0.2, base=0.05), retries=1, supported_errors=(ConnectionError,)
        ),
    )
    # Set before the pool makes its first connection (it makes them as asked for).
    pool.connection_class = _QUICK_CHECK.get(pool.connection_class, pool.connection_class)
    return Redis(connection_pool=pool)


@functools.cache
def _os_poll() -> Callable[[], Any]:
    """Return the operating system's poll(), even where gevent replaced select.poll."""
    # Looked up once: before gevent patches select, select.poll is the system's own already.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        poll: Callable[[], Any] = monkey.get_original("select", "poll")
        return poll
    return select.poll


class QuickCheck(AbstractConnection):
    """A connection that tells the pool "nothing waiting" with one poll() of its socket.

    redis-py's pool asks every connection it hands out whether a reply is waiting (`can_read`),
    which would mean one left behind by an interrupted command. Under gevent that question goes
    through gevent's poll, a round of its hub: about 30 µs of a 2 ms request, every command
    (docs/benchmarks.md, "HTTP floor"). A poll with no timeout never blocks, so the operating
    system's own answers it in place. Only "no" is answered here: any sign of data (on the
    socket, or already buffered by the reply reader) goes to redis-py's own full check.
    """

    def can_read(self, timeout: float = 0) -> bool:
        """Return whether a reply is waiting on this connection."""
        reader = getattr(self._parser, "_reader", None)  # hiredis's, when it reads replies
        if timeout == 0 and self._sock is not None and reader and not reader.has_data():
            poller = _os_poll()()
            poller.register(self._sock, select.POLLIN)
            if not poller.poll(0):
                return False
        return bool(super().can_read(timeout))


class QuickCheckConnection(QuickCheck, Connection):
    """A TCP connection with QuickCheck's `can_read`."""


class QuickCheckUnixConnection(QuickCheck, UnixDomainSocketConnection):
    """A unix-socket connection with QuickCheck's `can_read`."""


# TLS keeps redis-py's own check: decrypted bytes can wait above the socket, unseen by poll().
_QUICK_CHECK: dict[type[Any], type[Any]] = {
    Connection: QuickCheckConnection,
    UnixDomainSocketConnection: QuickCheckUnixConnection,
}


def time_micros(reply: tuple[int, int] | list[int]) -> int:
    """Return a Redis TIME reply (seconds, microseconds) as integer microseconds."""
    seconds, micros = reply
    return int(seconds) * MICROS + int(micros)


def redis_time_micros(connection: Redis) -> int:
    """Return the Redis server's clock now, in integer microseconds since the epoch."""
    return time_micros(connection.time())
