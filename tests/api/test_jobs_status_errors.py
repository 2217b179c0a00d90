"""POST /v1/toolkit/jobs/status: refusals (400, 401, 404) and an unreachable Redis (500)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.api.helpers import JOBS_STATUS, assert_envelope, post
from tests.support import API_KEY


@pytest.mark.parametrize(
    "value",
    ["60", "", True, False, None, [60], {"seconds": 60}, -1, -0.001],
    ids=["string", "empty-string", "true", "false", "null", "array", "object", "neg", "neg-frac"],
)
def test_since_seconds_must_be_a_non_negative_number(client: FlaskClient, value: Any) -> None:
    """A since_seconds that is not a number, or is negative, is refused with 400."""
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": value}), 400)
    assert "since_seconds" in body["message"]
    assert body["response"] is None


def test_since_seconds_beyond_retention_is_refused(make_app: Callable[..., Flask]) -> None:
    """A window longer than the index keeps states for is refused with 400."""
    client = make_app(retention_seconds=120).test_client()
    for value in (121, 120.5, 10**30):
        body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": value}), 400)
        assert "at most 120" in body["message"], value


@pytest.mark.parametrize(
    "raw",
    [
        b'{"since_seconds": 1e999}',
        b'{"since_seconds": -1e999}',
        b'{"since_seconds": NaN}',
        b'{"since_seconds": Infinity}',
        b'{"since_seconds": -Infinity}',
    ],
)
def test_non_finite_since_seconds_is_refused(client: FlaskClient, raw: bytes) -> None:
    """Infinite or NaN since_seconds, however spelled, is a 400, never a 500."""
    resp = post(client, JOBS_STATUS, data=raw, content_type="application/json")
    message = assert_envelope(resp, 400)["message"]
    # Refusing the NaN/Infinity literals as invalid JSON is as good as refusing the value.
    assert "since_seconds" in message or "not valid JSON" in message


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": ""},
        {"x-api-key": "wrong"},
        {"x-api-key": API_KEY + "x"},
        {"authorization": f"Bearer {API_KEY}"},
    ],
    ids=["missing", "empty", "wrong", "longer", "other-header"],
)
def test_requires_the_api_key(client: FlaskClient, headers: dict[str, str]) -> None:
    """Without the right x-api-key the answer is 401 "Unauthorized" and no statuses."""
    body = assert_envelope(post(client, JOBS_STATUS, {}, headers=headers), 401)
    assert body["message"] == "Unauthorized"
    assert body["response"] is None


def test_key_is_checked_before_the_body(client: FlaskClient) -> None:
    """An unauthenticated caller learns nothing about its body's validity: 401, not 400."""
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": "x"}, headers={}), 401)
    assert body["message"] == "Unauthorized"


def test_flushed_redis_is_jobs_directory_not_found(client: FlaskClient, conn: redis.Redis) -> None:
    """Once the registry marker is gone (FLUSHALL) the answer is 404 "Jobs directory not found"."""
    assert_envelope(post(client, JOBS_STATUS), 200)
    conn.flushall()
    for request in (None, {"since_seconds": 30}):
        body = assert_envelope(post(client, JOBS_STATUS, request), 404)
        assert body["message"] == "Jobs directory not found"
        assert body["response"] is None


def test_unreachable_redis_is_a_prompt_500(down_client: FlaskClient) -> None:
    """With Redis unreachable the answer is a JSON 500 naming the failure, within seconds."""
    started = time.monotonic()
    resp = post(down_client, JOBS_STATUS, {"since_seconds": 60, "id": "r-1"})
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 500)
    assert body["message"].startswith("Failed to retrieve job statuses: ")
    assert body["queue_length"] is None
    assert body["id"] == "r-1"
    assert elapsed < 5, elapsed


def test_unreachable_redis_still_validates_first(down_client: FlaskClient) -> None:
    """A bad since_seconds is a 400 even when Redis is down: validation needs no Redis."""
    body = assert_envelope(post(down_client, JOBS_STATUS, {"since_seconds": -5}), 400)
    assert "since_seconds" in body["message"]
