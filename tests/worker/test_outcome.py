"""A job's outcome is stored whole: a result too large fails clearly, a full Redis is waited out."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
import redis
from flask.testing import FlaskClient
from redis.exceptions import OutOfMemoryError
from rq.job import Job
from rq.serializers import DefaultSerializer

from shared import tasks
from tests.helpers import describe_job, submit
from worker import main
from worker.main import TrackingMixin, store_outcome


@pytest.fixture(autouse=True)
def keep_the_result_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the catalog's result limit back after each test (workers set it when built)."""
    monkeypatch.setattr(tasks, "_max_result_bytes", tasks._max_result_bytes)


def test_a_result_over_the_limit_fails_the_job_saying_why(
    client: FlaskClient, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A result larger than MAX_RESULT_BYTES: the job fails, its error naming the limit."""
    big = submit(client, "echo", {"text": "x" * 5000})
    small = submit(client, "echo", {"text": "x" * 100})
    run_worker(max_result_bytes=2048)
    failed = describe_job(client, big)
    assert failed["job_status"] == "failed"
    assert "ResultTooLargeError" in failed["error"]
    assert "more than MAX_RESULT_BYTES (2048): not stored" in failed["error"]
    assert "result" not in failed
    assert describe_job(client, small)["result"] == {"text": "x" * 100}


def test_a_result_at_the_limit_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is inclusive and counts what RQ stores: pickled, then base64."""
    payload = {"text": "x" * 1000}
    # RQ stores a result pickled, then base64-encoded: 4 bytes for every 3.
    size = len(base64.b64encode(DefaultSerializer.dumps(payload)))
    tasks.load((), max_result_bytes=size)
    assert tasks.run_task("echo", payload) == payload
    tasks.load((), max_result_bytes=size - 1)
    with pytest.raises(tasks.ResultTooLargeError, match=f"takes {size} bytes"):
        tasks.run_task("echo", payload)


class FlakyWrite:
    """A write that finds Redis out of memory `failures` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'")


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the worker's pauses instead of sleeping them."""
    slept: list[float] = []
    monkeypatch.setattr(main.time, "sleep", slept.append)
    return slept


def test_an_outcome_is_stored_once_redis_has_room(
    conn: redis.Redis, pauses: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory twice, then room: three tries, pauses doubling, each wait logged."""
    write = FlakyWrite(failures=2)
    store_outcome(Job(id="job-1", connection=conn), write)
    assert write.calls == 3
    assert pauses == [0.5, 1.0]
    waits = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert waits == [
        "job job-1: Redis is out of memory; storing its outcome again in 0.5 s",
        "job job-1: Redis is out of memory; storing its outcome again in 1.0 s",
    ]


def test_pauses_stop_doubling_at_the_maximum(conn: redis.Redis, pauses: list[float]) -> None:
    """The pauses double up to OUTCOME_MAX_DELAY and stay there."""
    write = FlakyWrite(failures=7)
    store_outcome(Job(id="job-1", connection=conn), write, patience=10**6)
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_worker_gives_up_after_its_patience(
    conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the patience the out-of-memory error goes up to RQ, not swallowed."""
    clock = iter(range(0, 10_000, 3))
    monkeypatch.setattr(main.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(main.time, "sleep", lambda seconds: None)
    write = FlakyWrite(failures=10**6)
    with pytest.raises(OutOfMemoryError):
        store_outcome(Job(id="job-1", connection=conn), write, patience=20)
    assert 2 <= write.calls < 10


def test_other_errors_are_not_retried(conn: redis.Redis) -> None:
    """Only a full Redis is waited out; any other error goes up at once."""
    calls = []

    def broken() -> None:
        calls.append(1)
        raise redis.ResponseError("ERR something else")

    with pytest.raises(redis.ResponseError):
        store_outcome(Job(id="job-1", connection=conn), broken)
    assert len(calls) == 1
