"""Malformed bodies, unknown paths, wrong methods, oversized bodies, Redis down: JSON always."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import AUTH, JOB_STATUS, JOBS, JOBS_STATUS, assert_envelope, post, queue_length

POST_ENDPOINTS = [JOBS_STATUS, JOB_STATUS, JOBS]

BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "truncated": (b'{"since_seconds": 5', "not valid JSON"),
    "trailing comma": (b'{"task": "echo",}', "not valid JSON"),
    "single quotes": (b"{'task': 'echo'}", "not valid JSON"),
    "text": (b"hello", "not valid JSON"),
    "two documents": (b"{} {}", "not valid JSON"),
    "form": (b"task=echo&payload=x", "not valid JSON"),
    "bad utf-8 in string": (b'{"id": "\xc3\x28"}', "UTF-8"),
    "bad utf-8 start": (b"\x80\x81{}", "UTF-8"),
    "array": (b"[1, 2]", "must be a JSON object"),
    "string": (b'"since_seconds"', "must be a JSON object"),
    "number": (b"600", "must be a JSON object"),
    "null": (b"null", "must be a JSON object"),
    "true": (b"true", "must be a JSON object"),
    "deep arrays": (b"[" * 100_000, "not valid JSON"),
    "deep objects": (b'{"a":' * 100_000, "not valid JSON"),
    "deep closed": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
}


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize(("raw", "hint"), BAD_BODIES.values(), ids=BAD_BODIES)
def test_malformed_body_is_400(
    client: FlaskClient, conn: redis.Redis, path: str, raw: bytes, hint: str
) -> None:
    """A body that is not a readable JSON object is 400 (never 500), on every POST endpoint."""
    resp = post(client, path, data=raw, content_type="application/json")
    body = assert_envelope(resp, 400)
    assert hint in body["message"]
    assert body["id"] is None
    assert queue_length(conn) == 0


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_body_is_read_whatever_the_content_type(client: FlaskClient, path: str) -> None:
    """The body is parsed as JSON under any content type, so its errors are reported."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        resp = post(
            client, path, data=b'{"id": "ct", "since_seconds": -1}', content_type=content_type
        )
        assert assert_envelope(resp, 400)["id"] == "ct"


@pytest.mark.parametrize("depth", [600, 900])
def test_deep_but_parseable_submission_is_never_500(
    client: FlaskClient, conn: redis.Redis, depth: int
) -> None:
    """A payload nested deeply, yet within what the JSON parser accepts, is a 202 or a 400."""
    raw = b'{"task": "echo", "payload": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    resp = post(client, JOBS, data=raw, content_type="application/json")
    assert resp.status_code in (202, 400), resp.get_data(as_text=True)[:300]
    assert_envelope(resp, resp.status_code)


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_id_never_breaks_the_json(
    client: FlaskClient, path: str, literal: bytes
) -> None:
    """An `id` of NaN or Infinity is never echoed as non-standard JSON (NaN is not JSON)."""
    resp = post(client, path, data=b'{"task": "echo", "job_id": "x", "id": ' + literal + b"}")
    assert_envelope(resp, resp.status_code)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/v1/nope"),
        ("POST", "/v1/toolkit/nope"),
        ("GET", "/"),
        ("GET", "/v1/toolkit/jobs/status/extra"),
        ("GET", "/health/"),
    ],
)
def test_unknown_path_is_404_json(client: FlaskClient, method: str, path: str) -> None:
    """An unknown path is a 404 envelope, never an HTML page, with or without the key."""
    for headers in (AUTH, {}):
        body = assert_envelope(client.open(path, method=method, headers=headers), 404)
        assert body["message"] == "Not Found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", JOBS_STATUS, "POST"),
        ("DELETE", JOBS, "POST"),
        ("GET", JOBS, "POST"),
        ("PUT", JOB_STATUS, "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/v1/toolkit/authenticate", "GET"),
    ],
)
def test_wrong_method_is_405_json_with_allow(
    client: FlaskClient, method: str, path: str, allowed: str
) -> None:
    """A known path with the wrong method is a 405 envelope with an Allow header."""
    resp = client.open(path, method=method, headers=AUTH)
    body = assert_envelope(resp, 405)
    assert body["message"] == "Method Not Allowed"
    assert allowed in {m.strip() for m in resp.headers["Allow"].split(",")}


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_oversized_body_is_413_json(
    make_app: Callable[..., Flask], conn: redis.Redis, path: str
) -> None:
    """A body over max_request_bytes is a 413 envelope naming the limit; nothing is enqueued."""
    client = make_app(max_request_bytes=2048).test_client()
    raw = b'{"task": "echo", "payload": {"x": "' + b"a" * 4096 + b'"}}'
    body = assert_envelope(post(client, path, data=raw, content_type="application/json"), 413)
    assert "2048" in body["message"]
    assert queue_length(conn) == 0


def test_body_at_the_limit_is_read(make_app: Callable[..., Flask]) -> None:
    """A body of exactly max_request_bytes is accepted."""
    client = make_app(max_request_bytes=2048).test_client()
    prefix, suffix = b'{"task": "echo", "payload": {"x": "', b'"}}'
    raw = prefix + b"a" * (2048 - len(prefix) - len(suffix)) + suffix
    assert len(raw) == 2048
    assert_envelope(post(client, JOBS, data=raw, content_type="application/json"), 202)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (JOB_STATUS, {"job_id": "abc"}, "Failed to retrieve the job's status: Redis unavailable"),
        (JOBS, {"task": "echo"}, "Failed to submit the job: Redis unavailable"),
        (JOBS_STATUS, {}, "Failed to retrieve job statuses: Redis unavailable"),
    ],
)
def test_unreachable_redis_is_a_prompt_503_in_words(
    down_client: FlaskClient, path: str, body: dict[str, str], message: str
) -> None:
    """With Redis unreachable each Redis-backed endpoint answers a JSON 503 within seconds,
    naming the failure in words (never Redis's address) with a Retry-After."""
    started = time.monotonic()
    resp = post(down_client, path, body)
    elapsed = time.monotonic() - started
    reply = assert_envelope(resp, 503)
    assert reply["message"] == message
    assert resp.headers["Retry-After"] == "5"
    assert "nonexistent" not in resp.get_data(as_text=True)
    assert reply["queue_length"] is None
    assert elapsed < 5, elapsed


def test_utf16_body_is_refused_as_not_utf8(client: FlaskClient) -> None:
    """A body in UTF-16 (which json.loads would guess) is a 400 naming UTF-8."""
    resp = client.post(JOBS_STATUS, data='{"since_seconds": 5}'.encode("utf-16"), headers=AUTH)
    reply = assert_envelope(resp, 400)
    assert "UTF-8" in reply["message"]


@pytest.mark.parametrize("path", [*POST_ENDPOINTS, "/v1/toolkit/authenticate", "/health"])
def test_options_is_a_json_405(client: FlaskClient, path: str) -> None:
    """OPTIONS gets a JSON 405 envelope, not Flask's automatic empty text/html 200."""
    resp = client.open(path, method="OPTIONS", headers=AUTH)
    assert_envelope(resp, 405)
    assert "OPTIONS" not in resp.headers.get("Allow", "")


def test_refusals_do_not_wait_for_the_queue_length(
    make_app: Callable[..., Flask],
) -> None:
    """A 4xx answer needs no Redis: it comes at once, with queue_length null, Redis or not."""
    down = make_app(redis_url="unix:///nonexistent/dir/redis.sock", redis_timeout=5)
    started = time.monotonic()
    reply = assert_envelope(post(down.test_client(), JOB_STATUS, {}), 400)
    assert time.monotonic() - started < 1.0
    assert reply["queue_length"] is None
