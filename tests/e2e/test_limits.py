"""Request size limits hold for every way of sending a body, through real gunicorn."""

from __future__ import annotations

import http.client
import json

import pytest
import redis

from tests.helpers import API_KEY, free_port, running, start_api

pytestmark = pytest.mark.e2e


def _chunked_post(port: int, chunks: list[bytes]) -> tuple[int, dict[str, object], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/toolkit/jobs",
            body=iter(chunks),
            headers={"x-api-key": API_KEY, "Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), resp.getheader("Content-Type", "")
    finally:
        conn.close()


def test_a_chunked_body_over_the_limit_is_413_and_enqueues_nothing(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """A chunked upload (no Content-Length) past MAX_REQUEST_BYTES gets 413, not a cut body."""
    env["MAX_REQUEST_BYTES"] = "4096"
    port = free_port()
    with running(start_api(env, port)):
        # Valid JSON even if cut anywhere after the first chunk's padding: only 413 is right.
        padding = b" " * 8192
        status, body, content_type = _chunked_post(
            port, [b'{"task": "echo", "payload": {}}', padding, padding]
        )
        assert status == 413, body
        assert content_type.startswith("application/json")
        assert body["code"] == 413
        assert conn.llen("rq:queue:default") == 0

        status, body, _ = _chunked_post(port, [b'{"task": "echo",', b' "payload": {}}'])
        assert status == 202, body
