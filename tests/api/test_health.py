"""GET /health: open to all, 200 while Redis answers, a prompt JSON 503 when it does not."""

from __future__ import annotations

import time

import pytest
import redis
from flask.testing import FlaskClient

from tests.helpers import AUTH, assert_envelope


@pytest.mark.parametrize("headers", [AUTH, {}], ids=["with-key", "without-key"])
def test_health_is_200_with_redis_up(client: FlaskClient, headers: dict[str, str]) -> None:
    """/health answers 200 while Redis answers, key or no key."""
    body = assert_envelope(client.get("/health", headers=headers), 200)
    assert body["response"] == {"redis": "ok"}
    assert body["message"] == "healthy"


def test_health_survives_a_flush(client: FlaskClient, conn: redis.Redis) -> None:
    """A flushed Redis is still a healthy Redis."""
    conn.flushall()
    assert_envelope(client.get("/health"), 200)


def test_health_is_503_with_redis_down(down_client: FlaskClient) -> None:
    """/health answers a JSON 503 within seconds when Redis is unreachable."""
    started = time.monotonic()
    resp = down_client.get("/health")
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 503)
    assert body["message"].startswith("Redis unavailable")
    assert body["response"] is None
    assert body["queue_length"] is None
    assert elapsed < 5, elapsed
