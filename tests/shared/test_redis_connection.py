"""The service's Redis connections: the pool's "reply waiting?" check answered by poll()."""

from __future__ import annotations

import select
import sys
import types
from collections.abc import Iterator

import pytest
import redis
from redis.connection import SSLConnection

from shared import redis as shared_redis
from shared.redis import QuickCheckConnection, QuickCheckUnixConnection, connect
from shared.settings import Settings
from tests.helpers import wait_until


@pytest.fixture
def held(conn: redis.Redis) -> Iterator[redis.connection.AbstractConnection]:
    """Return a connection taken from the service's pool, given back after the test."""
    connection = conn.connection_pool.get_connection()
    yield connection
    conn.connection_pool.release(connection)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("unix:///tmp/nothing-here.sock", QuickCheckUnixConnection),
        ("redis://127.0.0.1:1/0", QuickCheckConnection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
    ],
)
def test_each_scheme_gets_its_connection_class(url: str, kind: type) -> None:
    """Unix and TCP connections answer the check themselves; TLS keeps redis-py's own."""
    client = connect(Settings(redis_url=url))
    assert client.connection_pool.connection_class is kind


def test_a_clean_connection_has_nothing_to_read(
    held: redis.connection.AbstractConnection,
) -> None:
    """A connection whose replies were all read says so, and the next command works."""
    held.send_command("PING")
    assert held.read_response() in (b"PONG", "PONG", True)
    assert held.can_read() is False


def test_a_reply_waiting_on_the_socket_is_seen(
    held: redis.connection.AbstractConnection,
) -> None:
    """A reply not read yet (a command interrupted before its answer) is seen as waiting."""
    held.send_command("PING")
    assert wait_until(lambda: held.can_read(), timeout=5)
    held.read_response()
    assert held.can_read() is False


def test_a_reply_already_buffered_by_the_reader_is_seen(
    held: redis.connection.AbstractConnection,
) -> None:
    """Two replies arriving together: after reading one, the other (in the reader's buffer,
    no longer on the socket) still counts as waiting."""
    held.send_packed_command(held.pack_commands([("PING",), ("ECHO", "second")]))
    assert wait_until(lambda: held.can_read(), timeout=5)
    held.read_response()
    assert held.can_read() is True
    assert held.read_response() == b"second"
    assert held.can_read() is False


def test_a_connection_the_server_closed_is_refused_and_replaced(
    conn: redis.Redis, settings: Settings
) -> None:
    """A connection Redis closed is never taken for a clean one: the check raises, and the
    pool's next command runs on a new connection."""
    held = conn.connection_pool.get_connection()
    held.send_command("CLIENT", "ID")
    held_id = int(held.read_response())
    conn.connection_pool.release(held)
    other = connect(settings)
    assert other.client_kill_filter(_id=str(held_id)) == 1
    with pytest.raises(redis.ConnectionError):
        wait_until(lambda: held.can_read(), timeout=5)
    assert conn.ping() is True
    other.close()


def test_under_gevent_the_check_uses_the_system_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where gevent patched select, the check's poll is the original one, not gevent's."""
    original = object()
    monkey = types.SimpleNamespace(
        is_module_patched=lambda name: name == "select",
        get_original=lambda module, name: original if (module, name) == ("select", "poll") else 0,
    )
    monkeypatch.setitem(sys.modules, "gevent.monkey", monkey)
    shared_redis._os_poll.cache_clear()
    try:
        assert shared_redis._os_poll() is original
    finally:
        shared_redis._os_poll.cache_clear()
    monkeypatch.delitem(sys.modules, "gevent.monkey", raising=False)
    assert shared_redis._os_poll() is select.poll
    shared_redis._os_poll.cache_clear()
