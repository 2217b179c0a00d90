"""HTTP that the server layer itself refuses still gets a 4xx answer, never a 5xx or silence."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.helpers import API_KEY, RedisServer, free_port, running, service_env, start_api

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


# What the application answers itself: every answer JSON, nothing leaked, nothing redirected.
def _request(method: str, path: str, body: bytes = b"", key: bool = True) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if key:
        head += f"x-api-key: {API_KEY}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


HOSTILE = {
    "repeated slashes": (_request("GET", "//v1//toolkit//authenticate"), 404),
    "inner double slash": (_request("GET", "/v1//toolkit/authenticate"), 404),
    "trailing slash": (_request("GET", "/v1/toolkit/authenticate/"), 404),
    "infinite number": (
        _request("POST", "/v1/toolkit/jobs", b'{"task": "echo", "payload": {"n": 1e999}}'),
        400,
    ),
    "health without a key": (_request("GET", "/health", key=False), 200),
}


@pytest.mark.parametrize(("raw", "code"), HOSTILE.values(), ids=HOSTILE)
def test_the_application_answers_hostile_requests_in_json(
    api_port: int, raw: bytes, code: int
) -> None:
    """Repeated slashes, 1e999, /health without a key: a JSON envelope, no redirect, no leak."""
    answer = _exchange(api_port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert int(status_line.split()[1]) == code, answer
    assert "location" not in headers
    assert headers["content-type"] == "application/json"
    reply = json.loads(body)
    assert reply["code"] == code
    if code == 200:
        # Without the key /health tells healthy or not, nothing else.
        assert (reply["message"], reply["response"], reply["queue_length"]) == (
            "healthy",
            None,
            None,
        )
    if code == 400:
        assert "numbers must be finite" in reply["message"]
