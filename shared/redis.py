"""The Redis connection, built from settings and passed explicitly; Redis server time."""

from __future__ import annotations

from typing import Any, cast

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.connection import Connection, ConnectionInterface, ConnectionPool
from redis.exceptions import ConnectionError
from redis.retry import Retry

from shared.settings import Settings

MICROS = 1_000_000


class TrustingConnectionPool(ConnectionPool):
    """A connection pool that hands out its idle connections without probing them first: the
    API's (gunicorn's gevent workers).

    redis-py's pool asks the socket, at every checkout, whether it is readable: a sign of a
    reply left unread or of a connection the server closed. Under gevent that probe is a
    `select` through the hub; with the pool's lock and its usage metrics it was about half of
    each command's client CPU (a PING: 98 µs, 45 µs without; docs/benchmarks.md, "HTTP floor").
    Neither case needs it in the API:
    - A connection never comes back with a reply unread. redis-py disconnects it on any error
      while it sends or reads (BaseException included), and under gevent a timeout or a kill
      reaches a request only there, at a switch; a PubSub disconnects its own before giving it
      back. (A worker keeps redis-py's pool: RQ's job timeout is a SIGALRM that can land
      between a send and its read.)
    - A connection the server closed fails at its next use with a ConnectionError, which the
      client's Retry (`connect`) answers by reconnecting and sending the command again. The
      first send went into a closed socket, so no server ever ran it.
    Checkout and return are single list and set operations, atomic under the GIL: no lock but
    make_connection's. Fork safety (`_checkpid`) is kept.
    """

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Connection:
        """Return an idle connection (or a new one), connected."""
        self._checkpid()
        try:
            connection: Connection = self._available_connections.pop()
        except IndexError:
            with self._lock:
                connection = cast(Connection, self.make_connection())
        self._in_use_connections.add(connection)
        try:
            connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            self.release(connection)
            raise
        return connection

    def release(self, connection: ConnectionInterface) -> None:
        """Take `connection` back: idle again, or closed when an older process made it."""
        self._checkpid()
        try:
            self._in_use_connections.remove(connection)
        except KeyError:
            # Not handed out by this pool (or already returned): nothing to take back.
            return
        if self.owns_connection(connection):  # type: ignore[arg-type]
            self._available_connections.append(connection)
        else:
            connection.disconnect()  # type: ignore[no-untyped-call]


def connect(settings: Settings, pool_class: type[ConnectionPool] = ConnectionPool) -> Redis:
    """Return a Redis client whose every call gives up within about `redis_timeout` seconds."""
    # One quick retry on a connection error absorbs a connection dropped while idle (say by
    # a Redis restart). Timeouts are not retried: a retry would double how long a caller
    # waits while Redis hangs. RQ workers add their own backoff on top.
    pool = pool_class.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        retry=Retry(
            ExponentialBackoff(cap=0.2, base=0.05), retries=1, supported_errors=(ConnectionError,)
        ),
    )
    return Redis.from_pool(pool)


def time_micros(reply: tuple[int, int] | list[int]) -> int:
    """Return a Redis TIME reply (seconds, microseconds) as integer microseconds."""
    seconds, micros = reply
    return int(seconds) * MICROS + int(micros)


def redis_time_micros(connection: Redis) -> int:
    """Return the Redis server's clock now, in integer microseconds since the epoch."""
    return time_micros(connection.time())
