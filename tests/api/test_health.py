"""GET /health: open to all, 200 while Redis answers, a prompt JSON 503 when it does not."""

from __future__ import annotations

import time

import pytest
import redis
from flask.testing import FlaskClient

from tests.helpers import AUTH, assert_envelope

BEARER = {"Authorization": f"Bearer {AUTH['x-api-key']}"}


@pytest.mark.parametrize("headers", [AUTH, BEARER], ids=["x-api-key", "bearer"])
def test_health_with_the_key_tells_what_it_read(
    client: FlaskClient, conn: redis.Redis, headers: dict[str, str]
) -> None:
    """With the key, /health answers 200 with Redis's state, memory and the queue length."""
    conn.rpush("rq:queue:default", "a", "b")
    body = assert_envelope(client.get("/health", headers=headers), 200)
    assert body["message"] == "healthy"
    memory = conn.info("memory")
    assert body["response"] == {
        "redis": "ok",
        "used_memory": body["response"]["used_memory"],
        "maxmemory": memory["maxmemory"],
        "accepting_jobs": True,
    }
    assert body["response"]["used_memory"] > 0
    assert body["queue_length"] == 2


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "wrong-key-123"}, {"Authorization": "Bearer nope"}]
)
def test_health_without_the_key_says_only_healthy(
    client: FlaskClient, conn: redis.Redis, headers: dict[str, str]
) -> None:
    """Without the key, /health says healthy and nothing else: no Redis state, no queue length."""
    conn.rpush("rq:queue:default", "a")
    body = assert_envelope(client.get("/health", headers=headers), 200)
    assert body["message"] == "healthy"
    assert body["response"] is None
    assert body["queue_length"] is None


def test_health_survives_a_flush(client: FlaskClient, conn: redis.Redis) -> None:
    """A flushed Redis is still a healthy Redis."""
    conn.flushall()
    assert_envelope(client.get("/health"), 200)


@pytest.mark.parametrize("headers", [AUTH, {}], ids=["with-key", "without-key"])
def test_health_is_503_with_redis_down(down_client: FlaskClient, headers: dict[str, str]) -> None:
    """/health answers a JSON 503 within seconds when Redis is unreachable, never naming where
    Redis is; with the key it says Redis is unavailable."""
    started = time.monotonic()
    resp = down_client.get("/health", headers=headers)
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 503)
    assert "nonexistent" not in resp.get_data(as_text=True)
    if headers:
        assert body["message"] == "Redis unavailable"
        assert body["response"] == {"redis": "unavailable"}
    else:
        assert body["message"] == "unhealthy"
        assert body["response"] is None
    assert body["queue_length"] is None
    assert elapsed < 5, elapsed
