"""GET /v1/toolkit/authenticate and GET /health."""

from __future__ import annotations

import time

import pytest
import redis
from flask.testing import FlaskClient

from tests.api.helpers import AUTHENTICATE, assert_envelope
from tests.support import API_KEY, AUTH


def test_right_key_is_authorized(client: FlaskClient) -> None:
    """The configured key is answered 200 "Authorized"."""
    body = assert_envelope(client.get(AUTHENTICATE, headers=AUTH), 200)
    assert body["response"] == "Authorized"
    assert body["message"] == "success"
    assert body["queue_length"] == 0


def test_header_name_is_case_insensitive(client: FlaskClient) -> None:
    """The key is found under any capitalisation of the header name."""
    body = assert_envelope(client.get(AUTHENTICATE, headers={"X-API-KEY": API_KEY}), 200)
    assert body["response"] == "Authorized"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": ""},
        {"x-api-key": "wrong-key"},
        {"x-api-key": API_KEY[:-1] + chr(ord(API_KEY[-1]) + 1)},
        {"x-api-key": API_KEY[:-1]},
        {"x-api-key": API_KEY + "0"},
        {"x-api-key": API_KEY.upper()},
        {"x-api-key": "tëst-key"},
        {"authorization": API_KEY},
    ],
    ids=[
        "missing",
        "empty",
        "wrong",
        "last-char",
        "prefix",
        "longer",
        "upper",
        "non-ascii",
        "other-header",
    ],
)
def test_other_keys_are_unauthorized(client: FlaskClient, headers: dict[str, str]) -> None:
    """Any key but the configured one, even one differing in its last character, is 401."""
    body = assert_envelope(client.get(AUTHENTICATE, headers=headers), 401)
    assert body["message"] == "Unauthorized"
    assert body["response"] is None
    # An unauthenticated caller does not learn the queue length.
    assert body["queue_length"] is None


def test_authenticate_needs_no_redis(down_client: FlaskClient) -> None:
    """Checking the key works while Redis is down; the queue length is then unknown."""
    body = assert_envelope(down_client.get(AUTHENTICATE, headers=AUTH), 200)
    assert body["response"] == "Authorized"
    assert body["queue_length"] is None


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
