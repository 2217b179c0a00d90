"""POST /v1/toolkit/jobs/status: which jobs fall inside the window, by Redis time; refusals
(400, 404) and an unreachable Redis (500)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq.job import JobStatus

from shared import index as index_module
from shared import keys
from shared.index import StatusIndex
from shared.job import TrackedJob
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from tests.helpers import (
    AUTH,
    ENVELOPE_FIELDS,
    JOB_STATUS,
    JOBS,
    JOBS_STATUS,
    assert_envelope,
    indexed,
    post,
    queue_length,
    record,
    submit,
    wait_until,
)
from worker.main import TrackingMixin


def plant(conn: redis.Redis, job_id: str, status: Status, seconds_ago: float) -> None:
    """Put `job_id` in the index as if its state had changed `seconds_ago` by Redis time."""
    score = redis_time_micros(conn) - int(seconds_ago * MICROS)
    conn.zadd(keys.status_index_key(status), {job_id: score})


DEFAULT_WINDOW_REQUESTS: dict[str, dict[str, Any]] = {
    "no body": {},
    "empty body, JSON content type": {"data": b"", "content_type": "application/json"},
    "empty body, no content type": {"data": b""},
    "blank body": {"data": b" \n", "content_type": "application/json"},
    "empty object": {"json": {}},
}


@pytest.mark.parametrize("kwargs", DEFAULT_WINDOW_REQUESTS.values(), ids=DEFAULT_WINDOW_REQUESTS)
def test_missing_since_seconds_means_600(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex, kwargs: dict[str, Any]
) -> None:
    """Without since_seconds the window is the last 600 seconds, whatever the empty body."""
    record(index, "now", JobStatus.QUEUED)
    plant(conn, "inside", Status.DONE, 590)
    plant(conn, "outside", Status.DONE, 610)
    body = assert_envelope(client.post(JOBS_STATUS, headers=AUTH, **kwargs), 200)
    assert body["response"] == {"now": "queued", "inside": "done"}
    assert body["message"] == "success"


@pytest.mark.parametrize(
    ("since", "expected"),
    [(5, {"recent"}), (60, {"recent", "older"}), (2.5, {"recent"}), (0.5, set())],
)
def test_since_seconds_integer_and_fractional(
    client: FlaskClient, conn: redis.Redis, since: float, expected: set[str]
) -> None:
    """since_seconds, integer or fractional, bounds the window to that many seconds back."""
    plant(conn, "recent", Status.RUNNING, 1)
    plant(conn, "older", Status.RUNNING, 30)
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": since}), 200)
    assert set(body["response"]) == expected


def test_reports_every_status(
    app: Flask,
    client: FlaskClient,
    index: StatusIndex,
    run_worker: Callable[..., TrackingMixin],
) -> None:
    """Each job appears once, with its latest status: queued, running, done, failed, canceled."""
    done = submit(client, "echo", {"x": 1})
    failed = submit(client, "fail", {"message": "boom"})
    run_worker()
    queued = submit(client, "echo")
    canceled = submit(client, "echo")
    TrackedJob.fetch(canceled, connection=index.connection).cancel()
    record(index, "running-job", JobStatus.STARTED)

    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 60}), 200)
    assert body["response"] == {
        queued: "queued",
        "running-job": "running",
        done: "done",
        failed: "failed",
        canceled: "canceled",
    }
    assert body["queue_length"] == 1


def test_empty_window_is_an_empty_object(client: FlaskClient, conn: redis.Redis) -> None:
    """With no state change inside the window the response is {}."""
    assert assert_envelope(post(client, JOBS_STATUS), 200)["response"] == {}
    plant(conn, "old", Status.DONE, 100)
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 10}), 200)
    assert body["response"] == {}


def test_window_boundary_follows_redis_time(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """A change older than since_seconds (by Redis time) is out; within it, in; 0 excludes it."""
    record(index, "edge", JobStatus.FINISHED)
    found = indexed(conn, "edge")
    assert found is not None
    _, recorded = found
    wait_until(lambda: redis_time_micros(conn) - recorded > 300_000, timeout=5, interval=0.02)

    shorter = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 0.2}), 200)
    assert shorter["response"] == {}
    longer = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 5}), 200)
    assert longer["response"] == {"edge": "done"}
    zero = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 0}), 200)
    assert zero["response"] == {}


def test_since_seconds_equal_to_retention_is_allowed(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """since_seconds may reach the retention itself."""
    client = make_app(retention_seconds=120, webhook_secret=None).test_client()
    plant(conn, "old", Status.FAILED, 100)
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 120}), 200)
    assert body["response"] == {"old": "failed"}


def test_queue_length_is_reported(client: FlaskClient, conn: redis.Redis) -> None:
    """The envelope's queue_length is the number of jobs waiting in the queue."""
    submit(client)
    submit(client)
    body = assert_envelope(post(client, JOBS_STATUS), 200)
    assert body["queue_length"] == queue_length(conn) == 2
    assert len(body["response"]) == 2


def test_not_refused_when_the_queue_is_full(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """Status queries are answered while the queue is at MAX_QUEUE_LENGTH."""
    client = make_app(max_queue_length=1).test_client()
    waiting = submit(client)
    assert_envelope(post(client, JOBS, {"task": "echo"}), 429)
    body = assert_envelope(post(client, JOBS_STATUS), 200)
    assert body["response"] == {waiting: "queued"}
    assert_envelope(post(client, JOB_STATUS, {"job_id": waiting}), 200)


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
    client = make_app(retention_seconds=120, webhook_secret=None).test_client()
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
    # The NaN/Infinity literals are not JSON; 1e999 is, but out of a float's range.
    assert "not valid JSON" in message or "numbers must be finite" in message


def test_flushed_redis_is_jobs_directory_not_found(client: FlaskClient, conn: redis.Redis) -> None:
    """Once the index marker is gone (FLUSHALL) the answer is 404 "Jobs directory not found"."""
    assert_envelope(post(client, JOBS_STATUS), 200)
    conn.flushall()
    for request in (None, {"since_seconds": 30}):
        body = assert_envelope(post(client, JOBS_STATUS, request), 404)
        assert body["message"] == "Jobs directory not found"
        assert body["response"] is None


def test_unreachable_redis_is_a_prompt_error_envelope(down_client: FlaskClient) -> None:
    """With Redis unreachable the answer is a JSON error envelope naming the failure, promptly."""
    started = time.monotonic()
    resp = post(down_client, JOBS_STATUS, {"since_seconds": 60, "id": "r-1"})
    elapsed = time.monotonic() - started
    # The status and wording are the central Redis error handler's (api/handlers.py).
    assert resp.status_code in (500, 503)
    body = assert_envelope(resp, resp.status_code)
    assert body["message"].startswith("Failed to retrieve job statuses: ")
    assert "redis.sock" not in body["message"]
    assert body["queue_length"] is None
    assert body["id"] == "r-1"
    assert elapsed < 5, elapsed


def test_unreachable_redis_still_validates_first(down_client: FlaskClient) -> None:
    """A bad since_seconds is a 400 even when Redis is down: validation needs no Redis."""
    body = assert_envelope(post(down_client, JOBS_STATUS, {"since_seconds": -5}), 400)
    assert "since_seconds" in body["message"]


def plant_many(conn: redis.Redis, count: int) -> dict[str, str]:
    """Put `count` jobs over every status in the index, changed within the last minute."""
    now = redis_time_micros(conn)
    statuses = list(Status)
    expected: dict[str, str] = {}
    with conn.pipeline(transaction=False) as pipe:
        for i in range(count):
            status = statuses[i % len(statuses)]
            # Three jobs per microsecond: batches end inside runs of equal scores.
            pipe.zadd(keys.status_index_key(status), {f"job-{i}": now - 30 * MICROS + i // 3})
            expected[f"job-{i}"] = status.value
        pipe.execute()
    return expected


def test_a_window_larger_than_a_batch_is_streamed_whole(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past one batch per set the answer streams: the same envelope, fields, headers and jobs."""
    monkeypatch.setattr(index_module, "WINDOW_BATCH", 4)
    expected = plant_many(conn, 103)
    resp = post(client, JOBS_STATUS, {"since_seconds": 60, "id": "big"})
    # Streamed: no length known up front.
    assert "Content-Length" not in resp.headers
    assert resp.headers["X-Request-ID"]
    body = assert_envelope(resp, 200)
    assert tuple(body) == (*ENVELOPE_FIELDS, "server_time", "next_cursor")
    assert body["response"] == expected
    assert body["id"] == "big"
    assert body["message"] == "success"
    assert body["queue_length"] == 0
    # No key twice: the object read as pairs holds as many as the dict.
    pairs = json.loads(resp.get_data(), object_pairs_hook=list)
    assert len(dict(pairs)["response"]) == len(expected)


def test_a_window_within_a_batch_is_not_streamed(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below a batch per set the answer is one consistent read, not streamed."""
    monkeypatch.setattr(index_module, "WINDOW_BATCH", 1000)
    expected = plant_many(conn, 103)
    resp = post(client, JOBS_STATUS, {"since_seconds": 60})
    assert int(resp.headers["Content-Length"]) == len(resp.get_data())
    assert assert_envelope(resp, 200)["response"] == expected


def test_redis_failing_mid_stream_truncates_the_body(
    client: FlaskClient,
    conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis failure after the answer started ends it unclosed: never valid JSON; logged."""
    monkeypatch.setattr(index_module, "WINDOW_BATCH", 4)
    plant_many(conn, 103)
    resp = post(client, JOBS_STATUS, {"since_seconds": 60})
    assert resp.status_code == 200

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(redis.Redis, "zrangebyscore", unavailable)
    sent = bytearray()
    with pytest.raises(redis.ConnectionError):
        for part in resp.response:
            sent += part
    assert sent.startswith(b'{"code":200,')
    with pytest.raises(json.JSONDecodeError):
        json.loads(sent)
    assert "the streamed answer broke off" in caplog.text
