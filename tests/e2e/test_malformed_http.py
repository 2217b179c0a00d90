"""HTTP that the server layer itself refuses still gets a 4xx answer, never a 5xx or silence."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.helpers import RedisServer, free_port, running, service_env, start_api

pytestmark = pytest.mark.e2e

MALFORMED = {
    "request line over 4 KiB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 KiB": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    "too many headers": b"GET /health HTTP/1.1\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(200))
    + b"\r\n",
    "garbage request line": b"\x00\x01\x02 nonsense\r\n\r\n",
    "bad content length": b"POST /v1/toolkit/jobs HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: abc\r\n\r\n",
    "bad http version": b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
}


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def api_port(redis_server: RedisServer) -> Iterator[int]:
    """Run one gunicorn for the module's requests."""
    port = free_port()
    with running(start_api(service_env(redis_server.url), port)):
        yield port


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED)
def test_malformed_requests_get_a_4xx(api_port: int, raw: bytes) -> None:
    """Each malformed request is answered with a 4xx status line, not a 5xx or a closed socket."""
    answer = _exchange(api_port, raw)
    assert answer, "the connection was dropped without an answer"
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), status_line
    code = int(status_line.split()[1])
    assert 400 <= code < 500, status_line
