"""The API's trusting pool: no probe at checkout, yet never a stale reply, a lost command or a
connection shared between two users, across timeouts, interruptions, kills, threads and forks."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask
from gevent import GreenletExit
from redis.connection import AbstractConnection, ConnectionPool

from api.context import EXTENSION
from shared.redis import TrustingConnectionPool, connect
from shared.settings import Settings
from tests.helpers import wait_until

# A client's socket timeout well below the server-side wait of the command it cuts short.
SHORT_TIMEOUT = 0.2
THREADS = 16
ROUNDS = 200
# What interrupts a request under gevent (a kill) and a plain process (Ctrl-C): BaseExceptions
# that are not Exceptions, so no `except Exception` of redis-py's sees them.
INTERRUPTIONS: list[type[BaseException]] = [GreenletExit, KeyboardInterrupt]

MakeClient = Callable[..., redis.Redis]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """Return a factory of clients on a TrustingConnectionPool, built as the API builds its own,
    with settings changed by keyword; every one is closed after the test."""
    made: list[redis.Redis] = []

    def make(**changes: Any) -> redis.Redis:
        client = connect(replace(settings, **changes), TrustingConnectionPool)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def pool_of(client: redis.Redis) -> TrustingConnectionPool:
    """Return the client's pool, checked to be a trusting one."""
    pool = client.connection_pool
    assert isinstance(pool, TrustingConnectionPool)
    return pool


def idle_connection(client: redis.Redis) -> AbstractConnection:
    """Return the one idle connection of a client that has run a command, still connected."""
    pool = pool_of(client)
    assert not pool._in_use_connections
    (connection,) = pool._available_connections
    assert isinstance(connection, AbstractConnection)
    assert connection.is_connected
    return connection


def assert_own_replies(client: redis.Redis) -> None:
    """Check that each next command gets its own reply, none owed to an earlier command."""
    assert client.set("own", "value") is True
    assert client.get("own") == b"value"
    assert client.echo("fresh") == b"fresh"
    assert client.ping() is True


def assert_nothing_unread(client: redis.Redis) -> None:
    """Check that no idle connection of the client's pool has bytes waiting to be read."""
    pool = pool_of(client)
    assert not pool._in_use_connections
    for connection in pool._available_connections:
        # can_read() would connect a closed connection: only an open one can hold a reply.
        assert not (connection.is_connected and connection.can_read(timeout=0))


def reaped(pid: int) -> tuple[int, ...]:
    """Return (the wait status of child `pid`) once it has exited, () (falsy) until then."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return (status,) if done == pid else ()


class InterruptedSend:
    """A socket whose first sendall sends half of its bytes and then raises `error`, as a kill
    landing in the middle of a send would; later ones send everything."""

    def __init__(self, sock: socket.socket, error: type[BaseException]) -> None:
        self.sock = sock
        self.error: type[BaseException] | None = error

    def sendall(self, data: bytes) -> None:
        """Send the first half of `data` and raise, the first time; all of it afterwards."""
        error, self.error = self.error, None
        if error is None:
            self.sock.sendall(data)
            return
        self.sock.sendall(bytes(data)[: len(data) // 2])
        raise error()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_connect_builds_the_pool_asked_for(settings: Settings, make_client: MakeClient) -> None:
    """connect(settings, TrustingConnectionPool) trusts; connect(settings) keeps redis-py's pool."""
    assert type(make_client().connection_pool) is TrustingConnectionPool
    default = connect(settings)
    try:
        assert type(default.connection_pool) is ConnectionPool
    finally:
        default.close()


def test_the_api_uses_the_trusting_pool(app: Flask) -> None:
    """The app factory's Redis client draws on a TrustingConnectionPool."""
    assert type(app.extensions[EXTENSION].redis.connection_pool) is TrustingConnectionPool


def test_a_timed_out_command_leaves_no_late_reply(
    conn: redis.Redis, make_client: MakeClient
) -> None:
    """A BLPOP cut by the socket timeout closes its connection: the reply it is still owed,
    released by a push, never reaches the next commands, which get their own."""
    client = make_client(redis_timeout=SHORT_TIMEOUT)
    assert client.ping() is True
    connection = idle_connection(client)
    with pytest.raises(redis.exceptions.TimeoutError):
        client.blpop(["empty"], timeout=30)
    assert pool_of(client)._available_connections == [connection]
    assert not connection.is_connected
    # On a connection that kept its socket, BLPOP's reply would now come: [b"empty", b"late"].
    assert conn.rpush("empty", "late") == 1
    assert_own_replies(client)
    assert_nothing_unread(client)


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_an_interrupted_read_leaves_no_reply_unread(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, interruption: type[BaseException]
) -> None:
    """A BaseException raised before a reply is read closes the connection: the next commands
    get their own replies, not the one left in the socket."""
    client = make_client()
    assert client.ping() is True
    connection = idle_connection(client)
    parser = connection._parser
    read = parser.read_response
    calls = 0

    def interrupted_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise interruption()
        return read(*args, **kwargs)

    monkeypatch.setattr(parser, "read_response", interrupted_once)
    with pytest.raises(interruption):
        client.echo("stale")
    assert calls == 1
    assert pool_of(client)._available_connections == [connection]
    assert not connection.is_connected
    assert_own_replies(client)
    assert_nothing_unread(client)


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_an_interrupted_send_leaves_no_half_command(
    make_client: MakeClient, interruption: type[BaseException]
) -> None:
    """A BaseException raised halfway through a send closes the connection: the next command
    does not follow the half sent one on the same socket."""
    client = make_client()
    assert client.ping() is True
    connection = idle_connection(client)
    sock = connection._sock
    assert sock is not None
    connection._sock = InterruptedSend(sock, interruption)
    with pytest.raises(interruption):
        client.echo("half")
    assert pool_of(client)._available_connections == [connection]
    assert not connection.is_connected
    assert sock.fileno() == -1
    assert_own_replies(client)
    assert_nothing_unread(client)


def test_a_connection_the_server_closed_is_replaced_and_runs_the_command_once(
    conn: redis.Redis, make_client: MakeClient
) -> None:
    """An idle connection the server killed is reconnected on its next use, and an INCR sent
    into it first runs exactly once."""
    client = make_client()
    killed = client.client_id()
    connection = idle_connection(client)
    assert conn.client_kill_filter(_id=str(killed)) == 1
    wait_until(lambda: str(killed) not in {entry["id"] for entry in conn.client_list()})
    # The pool hands out the dead connection unprobed: it still holds its socket.
    assert connection.is_connected
    assert client.incr("counter") == 1
    assert conn.get("counter") == b"1"
    assert client.client_id() != killed
    assert pool_of(client)._created_connections == 1
    assert_own_replies(client)


def test_threads_never_share_a_connection(make_client: MakeClient) -> None:
    """16 threads writing and reading their own keys each get their own replies, on at most one
    connection per thread, all returned once they are done."""
    client = make_client()
    pool = pool_of(client)
    start = threading.Barrier(THREADS)

    def work(thread: int) -> list[tuple[int, object]]:
        start.wait(timeout=10)
        wrong: list[tuple[int, object]] = []
        for round_ in range(ROUNDS):
            value = f"{thread}:{round_}"
            assert client.set(f"key:{thread}", value) is True
            got = client.get(f"key:{thread}")
            if got != value.encode():
                wrong.append((round_, got))
        return wrong

    with ThreadPoolExecutor(THREADS) as executor:
        results = list(executor.map(work, range(THREADS)))
    assert results == [[]] * THREADS
    assert 1 <= pool._created_connections <= THREADS
    assert not pool._in_use_connections
    available = pool._available_connections
    assert len({id(connection) for connection in available}) == len(available)
    assert len(available) == pool._created_connections
    assert_nothing_unread(client)


def test_a_forked_child_makes_its_own_connection(make_client: MakeClient) -> None:
    """A child process never uses the parent's pooled connection: it connects anew, and the
    parent's connection still answers the parent."""
    client = make_client()
    parent_id = client.client_id()
    parent_connection = idle_connection(client)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # The child reports through the pipe and its exit status.
        status = 1
        try:
            os.close(reading)
            pool = pool_of(client)
            report = {
                "id": client.client_id(),
                "echo": client.echo("child") == b"child",
                "created": pool._created_connections,
                "parent_connection_kept": parent_connection in pool._available_connections,
            }
            os.write(writing, json.dumps(report).encode())
            status = 0
        except BaseException as error:
            os.write(writing, json.dumps({"error": repr(error)}).encode())
        finally:
            os._exit(status)
    os.close(writing)
    try:
        (status,) = wait_until(lambda: reaped(pid), timeout=20)
        report = json.loads(os.read(reading, 65536))
    finally:
        os.close(reading)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report == {
        "id": report["id"],
        "echo": True,
        "created": 1,
        "parent_connection_kept": False,
    }
    assert report["id"] != parent_id
    assert idle_connection(client) is parent_connection
    assert client.client_id() == parent_id
    assert_own_replies(client)


def test_release_takes_back_only_what_it_handed_out(
    settings: Settings, make_client: MakeClient
) -> None:
    """Releasing a connection twice idles it once; releasing another pool's does nothing."""
    pool = pool_of(make_client())
    mine = pool.get_connection()
    pool.release(mine)
    pool.release(mine)
    assert pool._available_connections == [mine]
    first = pool.get_connection()
    second = pool.get_connection()
    assert first is mine
    assert second is not mine
    pool.release(first)
    pool.release(second)

    other = pool_of(make_client())
    theirs = other.get_connection()
    pool.release(theirs)
    assert theirs not in pool._available_connections
    assert theirs.is_connected
    assert other._in_use_connections == {theirs}
    other.release(theirs)
    assert other._available_connections == [theirs]


def test_a_connection_of_another_process_is_closed_on_release(make_client: MakeClient) -> None:
    """A connection made under another pid goes back closed, never to the idle list."""
    pool = pool_of(make_client())
    connection = pool.get_connection()
    sock = connection._sock
    assert sock is not None
    connection.pid = os.getpid() + 1
    pool.release(connection)
    assert connection not in pool._available_connections
    assert not pool._in_use_connections
    assert not connection.is_connected
    assert sock.fileno() == -1
