"""Slow clients cannot starve the API: gunicorn's gevent worker, the header and body deadlines,
and the connection cap, against gunicorn started as the Procfile starts it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_procfile import procfile
from tests.helpers import (
    API_KEY,
    BIN,
    HOST,
    JOBS,
    JOBS_STATUS,
    Process,
    call,
    child_pids,
    free_port,
    running,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 200
# Ample for a deadline measured on a loaded 2-core machine, small beside the deadlines.
SLACK = 1.5
# TCP_ESTABLISHED, as /proc/net/tcp spells it.
ESTABLISHED = "01"
TRICKLED = b"GET /health HTTP/1.1\r\nHost: slow\r\nUser-Agent: trickle\r\nAccept: */*\r\n\r\n"


@contextlib.contextmanager
def web(env: dict[str, str], **overrides: str) -> Iterator[tuple[Process, int]]:
    """Run the Procfile's web command (gunicorn) with `overrides`; yield it and its port."""
    port = free_port()
    env = {
        **env,
        **overrides,
        "PORT": str(port),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    proc = Process(["bash", "-c", procfile()["web"]], env, name="slow-web")
    with running(proc):
        wait_healthy(proc, port)
        yield proc, port


def held_connections(master: Process, port: int) -> int:
    """Return how many TCP connections to `port` gunicorn's workers hold open."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port and state == ESTABLISHED:
            inodes.add(f"socket:[{inode}]")
    count = 0
    for worker in child_pids(master.popen.pid):
        with contextlib.suppress(OSError):  # a worker that ends while we look
            for fd in Path(f"/proc/{worker}/fd").iterdir():
                with contextlib.suppress(OSError):
                    count += os.readlink(fd) in inodes
    return count


def connect(port: int) -> socket.socket:
    """Return a TCP connection to the server, its reads bounded so that no test hangs."""
    return socket.create_connection((HOST, port), timeout=30)


def stalled_body(port: int, key: str | None) -> socket.socket:
    """Open a submission that announces 1000 bytes of body, sends a few, and stalls."""
    sock = connect(port)
    head = (
        f"POST {JOBS} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n"
    )
    if key is not None:
        head += f"x-api-key: {key}\r\n"
    sock.sendall(head.encode() + b'\r\n{"id": "stalled", "task": ')
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Return whether the server has closed `sock` (without waiting when it has not)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one HTTP answer off `sock`; return its status and its JSON body."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    assert resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, json.loads(resp.read())


class Trickler:
    """Send the next byte of TRICKLED on each of its sockets every `interval` seconds."""

    def __init__(self, sockets: list[socket.socket], interval: float) -> None:
        self.sockets = sockets
        self.interval = interval
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        live = list(self.sockets)
        while self.sent < len(TRICKLED) - 1 and not self.stop.is_set():
            for sock in list(live):
                try:
                    sock.sendall(TRICKLED[self.sent : self.sent + 1])
                except OSError:  # closed by the server: what a test may wait for
                    live.remove(sock)
            self.sent += 1
            self.stop.wait(self.interval)

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Collect the test's raw sockets and close every one of them at the end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.mark.timeout(90)
def test_polls_answer_within_a_second_while_200_slow_clients_hold_connections(
    env: dict[str, str], sockets: list[socket.socket]
) -> None:
    """With 200 slow keyless connections held open, polls and /health answer 200 within 1 s."""
    # Deadlines far past the measurement: the server answers while holding every slow client,
    # not because it has dropped them.
    with web(env, HEADER_TIMEOUT="120", BODY_TIMEOUT="120") as (proc, port):
        tricklers = [connect(port) for _ in range(SLOW_CLIENTS // 2)]
        sockets.extend(tricklers)
        sockets.extend(stalled_body(port, key=None) for _ in range(SLOW_CLIENTS // 2))
        with Trickler(tricklers, interval=1.5) as trickler:
            wait_until(lambda: held_connections(proc, port) == SLOW_CLIENTS, timeout=20)
            wait_until(lambda: trickler.sent >= 2, timeout=10)
            latencies: list[float] = []
            for _ in range(15):
                for reply in (
                    call(port, "POST", JOBS_STATUS, {"since_seconds": 600}),
                    call(port, "GET", "/health"),
                ):
                    assert reply.status == 200, reply.body
                    latencies.append(reply.elapsed)
            assert max(latencies) < 1.0, sorted(latencies)
            # Every slow client is still held: none was answered or dropped meanwhile.
            assert held_connections(proc, port) == SLOW_CLIENTS
            assert not any(closed_by_server(sock) for sock in sockets)
        output = proc.output()
    assert "Warning" not in output, output
    assert "Traceback" not in output, output


@pytest.mark.timeout(60)
def test_a_connection_trickling_its_headers_is_closed_at_header_timeout(
    env: dict[str, str], sockets: list[socket.socket]
) -> None:
    """Headers incomplete at HEADER_TIMEOUT, however steady the trickle: closed, unanswered."""
    with web(env, HEADER_TIMEOUT="2") as (_, port):
        sock = connect(port)
        sockets.append(sock)
        started = time.monotonic()
        # A byte every 0.5 s: each one well within 2 s of the last, the whole far beyond it.
        with Trickler([sock], interval=0.5):
            wait_until(lambda: closed_by_server(sock), timeout=2 + SLACK + 1)
        elapsed = time.monotonic() - started
    assert 2 - 0.5 <= elapsed <= 2 + SLACK, f"closed after {elapsed:.2f}s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("key", "code", "message"),
    [
        (API_KEY, 408, "Request body not received within 2 seconds"),
        # The refusal waits for the body, within the same deadline, to echo the client's id;
        # a body that never comes leaves the id out, and the answer is still the 401.
        (None, 401, "Unauthorized"),
    ],
    ids=["authenticated", "without key"],
)
def test_a_stalled_body_is_answered_at_body_timeout(
    env: dict[str, str],
    sockets: list[socket.socket],
    key: str | None,
    code: int,
    message: str,
) -> None:
    """A body stalled past BODY_TIMEOUT gets the JSON envelope: 408, or 401 without a key."""
    with web(env, BODY_TIMEOUT="2", HEADER_TIMEOUT="2") as (_, port):
        sock = stalled_body(port, key)
        sockets.append(sock)
        started = time.monotonic()
        status, body = read_answer(sock)
        elapsed = time.monotonic() - started
        assert (status, body["code"], body["message"]) == (code, code, message), body
        assert body["id"] is None, body
        assert 2 - 0.5 <= elapsed <= 2 + SLACK, f"answered after {elapsed:.2f}s"
        # What remains of the body never comes: the connection is closed within HEADER_TIMEOUT.
        wait_until(lambda: closed_by_server(sock), timeout=2 + SLACK)


@pytest.mark.timeout(60)
def test_past_max_connections_a_client_waits_until_a_held_one_times_out(
    env: dict[str, str], sockets: list[socket.socket]
) -> None:
    """With MAX_CONNECTIONS held, a new client is not served until HEADER_TIMEOUT frees one."""
    with web(env, MAX_CONNECTIONS="10", WEB_CONCURRENCY="1", HEADER_TIMEOUT="3") as (proc, port):
        assert len(child_pids(proc.popen.pid)) == 1
        idle = [connect(port) for _ in range(10)]
        sockets.extend(idle)
        wait_until(lambda: held_connections(proc, port) == 10, timeout=10)
        held_at = time.monotonic()
        # The kernel completes the handshake (gunicorn's listen backlog); gunicorn does not
        # accept it, so the request sent on it waits unread.
        late = connect(port)
        sockets.append(late)
        late.sendall(f"GET /health HTTP/1.1\r\nHost: late\r\nx-api-key: {API_KEY}\r\n\r\n".encode())
        late.settimeout(1.0)
        with pytest.raises(TimeoutError):
            late.recv(1)
        late.settimeout(30)
        status, body = read_answer(late)
        served_after = time.monotonic() - held_at
        assert (status, body["message"]) == (200, "healthy"), body
        assert 3 - 0.5 <= served_after <= 3 + SLACK, f"served after {served_after:.2f}s"
        wait_until(lambda: all(closed_by_server(sock) for sock in idle), timeout=SLACK)


@pytest.mark.timeout(60)
def test_sigterm_ends_idle_keep_alive_connections_at_once(
    env: dict[str, str], sockets: list[socket.socket]
) -> None:
    """SIGTERM closes idle keep-alive connections at once: gunicorn exits 0 within seconds."""
    with web(env, HEADER_TIMEOUT="60") as (proc, port):
        sock = connect(port)
        sockets.append(sock)
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: idle\r\nx-api-key: {API_KEY}\r\n\r\n".encode())
        assert read_answer(sock)[0] == 200
        proc.signal(signal.SIGTERM)
        wait_until(lambda: proc.popen.poll() is not None, timeout=10)
        assert proc.popen.returncode == 0, proc.output()
        assert closed_by_server(sock)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_what_follows_a_cut_body_is_never_read_as_a_request(
    env: dict[str, str], sockets: list[socket.socket], chunked: bool
) -> None:
    """After a 408 the connection closes: the rest of the body, a request smuggled in it
    included, is never answered (gunicorn would answer it with its HTML error page)."""
    with web(env, BODY_TIMEOUT="2", HEADER_TIMEOUT="5") as (_, port):
        sock = connect(port)
        sockets.append(sock)
        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 1000"
        head = f"POST {JOBS} HTTP/1.1\r\nHost: cut\r\nx-api-key: {API_KEY}\r\n{framing}\r\n\r\n"
        sock.sendall(head.encode() + (b"a\r\n{" if chunked else b"{"))
        status, _ = read_answer(sock)
        assert status == 408
        smuggled = (
            f"GET /v1/toolkit/authenticate HTTP/1.1\r\nHost: x\r\nx-api-key: {API_KEY}\r\n\r\n"
        )
        rest = (b'"a": 1}\r\n0\r\n\r\n' if chunked else b"") + smuggled.encode()
        try:
            sock.sendall(rest)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed already: nothing can be read as a request
        # Closed well before HEADER_TIMEOUT (5 s) would have closed an idle connection. A
        # reset is a close too: the kernel answers bytes sent after the close with RST.
        sock.settimeout(3)
        try:
            after = sock.recv(65536)
        except ConnectionResetError:
            after = b""
        assert after == b""
