"""Hardening: a full Redis refused in words, no leaks, finite numbers, JSON routing answers."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TimeoutError,
)
from werkzeug.test import create_environ, run_wsgi_app

from api import redis_health
from api.context import services
from api.handlers import redis_failure
from shared.queue import MemoryFullError, TrackedQueue
from tests.helpers import (
    AUTH,
    BUDGET,
    JOB_STATUS,
    JOBS,
    JOBS_STATUS,
    assert_envelope,
    post,
    queue_length,
    room_for,
)

REFUSED = "toolkit_jobs_submissions_refused_total"


def room_below_the_percent(conn: redis.Redis) -> int:
    """Return a maxmemory that Redis's use stays 200 kB under 80 percent of."""
    return int(conn.info("memory")["used_memory"]) * 100 // 80 + 250_000


@pytest.fixture
def full_redis(conn: redis.Redis) -> Iterator[None]:
    """Leave Redis room below SUBMIT_MEMORY_PERCENT (80) but none for one more job's result
    (MAX_RESULT_BYTES, 1 MiB); put maxmemory back afterwards."""
    conn.config_set("maxmemory", room_below_the_percent(conn))
    yield
    conn.config_set("maxmemory", 0)


@pytest.mark.usefixtures("full_redis")
def test_a_submission_without_room_is_a_503_with_retry_after(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """No room for the result: 503, Retry-After, the reason in words; nothing enqueued."""
    client = make_app(retry_after_seconds=7).test_client()
    resp = post(client, JOBS, {"task": "echo", "id": "mine"})
    body = assert_envelope(resp, 503)
    assert body["message"] == "Redis is too full to accept more jobs: try again later"
    assert body["id"] == "mine"
    assert resp.headers["Retry-After"] == "7"
    assert queue_length(conn) == 0
    assert not conn.keys("rq:job:*")


def test_memory_refusals_are_counted_apart(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """Each 503 of a full Redis adds one to submissions_refused_total{reason="memory"} only."""
    client = make_app(max_queue_length=1).test_client()

    def refused(reason: str) -> float:
        text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
        line = f'{REFUSED}{{reason="{reason}"}} '
        return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])

    before = refused("memory"), refused("queue_full")
    conn.config_set("maxmemory", room_below_the_percent(conn))
    try:
        for _ in range(2):
            assert_envelope(post(client, JOBS, {"task": "echo"}), 503)
    finally:
        conn.config_set("maxmemory", 0)
    assert (refused("memory") - before[0], refused("queue_full") - before[1]) == (2, 0)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionError("Error 111 connecting to 10.0.0.5:6379."), "Redis unavailable"),
        (TimeoutError("Timeout reading from 10.0.0.5:6379"), "Redis unavailable"),
        (BusyLoadingError("LOADING Redis is loading the dataset"), "Redis is loading its data"),
        (
            OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
            "Redis is out of memory",
        ),
        (ReadOnlyError("You can't write against a read only replica."), "Redis is read-only"),
        (
            ResponseError("MISCONF Redis is configured to save RDB snapshots"),
            "Redis refuses writes",
        ),
        (
            ResponseError("Command # 1 (HSET rq:job:a) of pipeline caused error: MISCONF Redis"),
            "Redis refuses writes",
        ),
        (ResponseError("ERR no such key: MISCONF"), None),
        (ResponseError("ERR unknown command 'zrangebyscor'"), None),
    ],
)
def test_redis_failures_are_named_in_words(exc: RedisError, words: str | None) -> None:
    """Each kind of Redis failure gets words of our own, never Redis's text; an error that is
    ours, not Redis's state, gets none (it is answered as an internal error)."""
    assert redis_failure(exc) == words


def test_an_unexpected_redis_error_is_a_500_without_its_text(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis error that is ours (a bad command) is a 500 in words; its text goes to the log."""
    with app.app_context():
        index = services().index

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ResponseError("ERR wrong number of arguments for 'zrangebyscore' tkj:index:done")

    monkeypatch.setattr(index, "window", broken)
    resp = post(client, JOBS_STATUS, {})
    body = assert_envelope(resp, 500)
    assert body["message"] == "Failed to retrieve job statuses: internal error"
    text = resp.get_data(as_text=True)
    assert "zrangebyscore" not in text
    assert "tkj:" not in text


def test_health_reports_what_the_gate_decides(conn: redis.Redis, queue: TrackedQueue) -> None:
    """At every fill level, accepting_jobs says whether the next submission gets in."""
    room_for(conn, 3.5)
    try:
        check_agreement(conn, queue)
    finally:
        conn.config_set("maxmemory", 0)


def check_agreement(conn: redis.Redis, queue: TrackedQueue) -> None:
    for _ in range(5):
        predicted = redis_health.check(conn, queue, BUDGET).accepting_jobs
        try:
            queue.enqueue_bounded(
                queue.create_job("shared.tasks.run_task", args=("echo", {})), 0, BUDGET
            )
            accepted = True
        except MemoryFullError:
            accepted = False
        assert predicted == accepted
    assert queue_length(conn) == 3


NON_FINITE = [
    b'{"since_seconds": 1e999}',
    b'{"task": "echo", "payload": {"n": 1e999}}',
    b'{"task": "echo", "payload": {"deep": [1, {"n": -1E400}]}}',
    b'{"job_id": "abc", "extra": 2e308}',
    b'{"id": 1e999}',
]


@pytest.mark.parametrize("raw", NON_FINITE)
@pytest.mark.parametrize("path", [JOBS_STATUS, JOB_STATUS, JOBS])
def test_non_finite_numbers_anywhere_are_400(
    client: FlaskClient, conn: redis.Redis, path: str, raw: bytes
) -> None:
    """A number too large for a float, anywhere in the body, is a 400 naming it; nothing runs."""
    resp = post(client, path, data=raw, content_type="application/json")
    body = assert_envelope(resp, 400)
    assert "out of range" in body["message"]
    assert "numbers must be finite" in body["message"]
    assert queue_length(conn) == 0


def test_the_largest_finite_number_is_accepted(client: FlaskClient) -> None:
    """1e308 is finite: it is kept and comes back as it was sent."""
    resp = post(client, JOBS, {"task": "echo", "payload": {"n": 1e308}})
    assert_envelope(resp, 202)


def call_raw(app: Flask, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Call `app` with PATH_INFO exactly `path` (the test client would rewrite `//`)."""
    environ = create_environ("/", headers=headers)
    environ["PATH_INFO"] = path
    body_iter, status, response_headers = run_wsgi_app(app, environ)
    body = b"".join(body_iter)
    return int(status.split()[0]), dict(response_headers), body


@pytest.mark.parametrize(
    "path",
    [
        "//v1//toolkit//authenticate",
        "/v1//toolkit/authenticate",
        "//v1/toolkit/jobs",
        "/v1/toolkit/authenticate/",
        "///",
    ],
)
def test_repeated_slashes_are_a_json_404_not_a_redirect(app: Flask, path: str) -> None:
    """A path with repeated or trailing slashes is never redirected: a JSON 4xx.

    Inner repeated slashes match no route (404); Werkzeug reads leading ones as one, so
    `//v1/toolkit/jobs` is that route, to which GET is a 405.
    """
    code, headers, body = call_raw(app, path, **AUTH)
    assert code == (405 if path == "//v1/toolkit/jobs" else 404)
    assert "Location" not in headers
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(body)["code"] == code


def test_the_dashboards_slash_redirect_is_json(make_app: Callable[..., Flask]) -> None:
    """/dashboard (no slash) redirects to /dashboard/ with a JSON envelope, Location kept."""
    app = make_app(dashboard_password="dashboard-secret")
    basic = base64.b64encode(b"admin:dashboard-secret").decode()
    code, headers, body = call_raw(app, "/dashboard", Authorization=f"Basic {basic}")
    assert code == 308
    assert headers["Location"].endswith("/dashboard/")
    assert headers["Content-Type"] == "application/json"
    reply = orjson.loads(body)
    assert reply["code"] == 308
    assert reply["message"] == f"Moved to {headers['Location']}"
    assert "X-Request-ID" in headers


@pytest.fixture
def refusing_writes(conn: redis.Redis) -> Iterator[None]:
    """Make Redis refuse every write (used memory over maxmemory); put it back afterwards."""
    conn.config_set("maxmemory", 1)
    yield
    conn.config_set("maxmemory", 0)


@pytest.mark.usefixtures("refusing_writes")
def test_health_and_metrics_both_say_redis_refuses_writes(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis out of memory: /health 503 "Redis refuses writes", redis_writable 0, redis_up 1;
    the log says why."""
    body = assert_envelope(client.get("/health", headers=AUTH), 503)
    assert body["message"] == "Redis refuses writes"
    assert body["response"]["redis"] == "refusing writes"
    assert body["response"]["accepting_jobs"] is False
    assert any(
        r.getMessage().startswith("Redis refuses writes: ") and "maxmemory" in r.getMessage()
        for r in caplog.records
    )
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert "toolkit_jobs_redis_up 1.0" in text
    assert "toolkit_jobs_redis_writable 0.0" in text
    assert "toolkit_jobs_accepting_jobs 0.0" in text


def test_the_health_probe_expires(client: FlaskClient, conn: redis.Redis) -> None:
    """The key /health writes to test writes lives a minute at most: it never accumulates."""
    assert_envelope(client.get("/health"), 200)
    ttl = conn.pttl("tkj:health:probe")
    assert 0 < ttl <= 60_000


def test_running_jobs_count_against_accepting_jobs(conn: redis.Redis, queue: TrackedQueue) -> None:
    """accepting_jobs reserves a result for each running job, as the gate does."""
    room_for(conn, 2.5)
    try:
        assert redis_health.check(conn, queue, BUDGET).accepting_jobs
        conn.zadd(queue.started_job_registry.key, {"running-1": 1, "running-2": 2})
        assert not redis_health.check(conn, queue, BUDGET).accepting_jobs
    finally:
        conn.config_set("maxmemory", 0)


def test_an_out_of_range_number_is_quoted_at_most_40_characters(client: FlaskClient) -> None:
    """The 400 quotes the number's first 40 characters, no more."""
    number = "1" + "0" * 60 + "e999"
    resp = post(client, JOBS, data=f'{{"n": {number}}}'.encode(), content_type="application/json")
    body = assert_envelope(resp, 400)
    assert f"{number[:40]} (numbers must be finite)" in body["message"]
    assert number[:41] not in body["message"]
