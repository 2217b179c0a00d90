"""Every job state change is recorded in the index, in agreement with RQ (in-process worker)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from shared import keys
from shared.index import StatusIndex, parse_transitions
from shared.redis import redis_time_micros
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import AUTH, Observed, error_of, indexed, submit
from worker.main import TrackingMixin


def test_submission_is_recorded_queued(
    client: FlaskClient,
    conn: redis.Redis,
    index: StatusIndex,
    observe: Callable[[str], Observed],
) -> None:
    """A submitted job is queued in the index and in RQ, scored by Redis time at submission."""
    before = redis_time_micros(conn)
    job_id = submit(client, "echo", {"a": 1})
    assert observe(job_id) == (Status.QUEUED, JobStatus.QUEUED)
    found = indexed(conn, job_id)
    assert found is not None
    assert found[1] >= before


def test_finished_job_is_done(
    client: FlaskClient,
    conn: redis.Redis,
    index: StatusIndex,
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """A job whose task returns is done in the index and finished in RQ, with a later score."""
    job_id = submit(client, "echo", {"a": 1})
    queued = indexed(conn, job_id)
    run_worker()
    assert observe(job_id) == (Status.DONE, JobStatus.FINISHED)
    done = indexed(conn, job_id)
    assert queued is not None and done is not None
    assert done[1] > queued[1]
    assert Job.fetch(job_id, connection=conn).return_value() == {"a": 1}


def test_raising_task_is_failed(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """A job whose task raises is failed in the index and in RQ, with the error kept."""
    job_id = submit(client, "fail", {"message": "boom-123"})
    run_worker()
    assert observe(job_id) == (Status.FAILED, JobStatus.FAILED)
    assert "TaskFailedError: boom-123" in error_of(conn, job_id)


def test_timed_out_job_is_failed(
    make_app: Callable[..., Flask],
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """A job that runs past JOB_TIMEOUT is stopped and failed in the index and in RQ."""
    client = make_app(job_timeout=1).test_client()
    job_id = submit(client, "sleep", {"seconds": 30})
    run_worker(job_timeout=1)
    assert observe(job_id) == (Status.FAILED, JobStatus.FAILED)
    assert "JobTimeoutException" in error_of(conn, job_id)


def test_canceled_queued_job_is_canceled_and_never_runs(
    client: FlaskClient,
    conn: redis.Redis,
    job_class: type[Job],
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """Canceling a queued job (with the service's job class) records canceled; it never runs."""
    job_id = submit(client, "echo", {})
    job_class.fetch(job_id, connection=conn).cancel()
    assert observe(job_id) == (Status.CANCELED, JobStatus.CANCELED)
    run_worker()
    assert observe(job_id) == (Status.CANCELED, JobStatus.CANCELED)
    assert Job.fetch(job_id, connection=conn).latest_result() is None


def test_deferred_dependent_is_queued_until_it_runs(
    conn: redis.Redis,
    queue: Queue,
    index: StatusIndex,
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """A job deferred behind another is queued in the index, then re-recorded and done."""
    parent = queue.enqueue(RUNNER, "echo", {"step": 1})
    child = queue.enqueue(RUNNER, "echo", {"step": 2}, depends_on=parent)
    assert observe(child.id) == (Status.QUEUED, JobStatus.DEFERRED)
    deferred = indexed(conn, child.id)
    run_worker()
    assert observe(parent.id) == (Status.DONE, JobStatus.FINISHED)
    assert observe(child.id) == (Status.DONE, JobStatus.FINISHED)
    done = indexed(conn, child.id)
    assert deferred is not None and done is not None
    assert done[1] > deferred[1]


def test_scheduled_job_is_queued(queue: Queue, observe: Callable[[str], Observed]) -> None:
    """A job scheduled for later is queued in the index while RQ holds it as scheduled."""
    job = queue.enqueue_in(timedelta(minutes=5), RUNNER, "echo", {})
    assert observe(job.id) == (Status.QUEUED, JobStatus.SCHEDULED)


def test_retried_job_is_queued_again_then_failed(
    queue: Queue,
    conn: redis.Redis,
    make_worker: Callable[[], TrackingMixin],
    index: StatusIndex,
    observe: Callable[[str], Observed],
) -> None:
    """A failing job with a retry left goes back to queued (re-scored), then ends failed."""
    job = queue.enqueue(RUNNER, "fail", {"message": "again"}, retry=Retry(max=1))
    first = indexed(conn, job.id)
    make_worker().work(burst=True, max_jobs=1)
    assert observe(job.id) == (Status.QUEUED, JobStatus.QUEUED)
    requeued = indexed(conn, job.id)
    assert first is not None and requeued is not None
    assert requeued[1] > first[1]
    make_worker().work(burst=True)
    assert observe(job.id) == (Status.FAILED, JobStatus.FAILED)


def test_requeued_failed_job_is_queued(
    client: FlaskClient,
    conn: redis.Redis,
    queue: Queue,
    job_class: type[Job],
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """Requeuing a failed job from RQ's failed registry records it queued again."""
    job_id = submit(client, "fail", {"message": "once"})
    run_worker()
    assert observe(job_id) == (Status.FAILED, JobStatus.FAILED)
    FailedJobRegistry(queue=queue, job_class=job_class).requeue(job_id)
    assert observe(job_id) == (Status.QUEUED, JobStatus.QUEUED)


def test_each_transition_logs_from_to_and_duration(
    client: FlaskClient,
    run_worker: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Submission and worker log one line per transition: job id, task, from, to, duration."""
    import logging

    with caplog.at_level(logging.INFO):
        resp = client.post("/v1/toolkit/jobs", json={"task": "echo", "payload": {}}, headers=AUTH)
        job_id = resp.get_json()["job_id"]
        run_worker()
    moves = [
        (r.from_status, r.to_status, r.duration_s)  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "job_id", None) == job_id
    ]
    assert [(a, b) for a, b, _ in moves] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "done"),
    ]
    assert moves[0][2] is None
    assert all(duration is not None and duration >= 0 for _, _, duration in moves[1:])


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_each_transition_is_counted_once(
    queue: Queue,
    conn: redis.Redis,
    job_class: type[Job],
    run_worker: Callable[..., TrackingMixin],
    worker_class: str,
) -> None:
    """Through real RQ runs, the transitions hash counts every status change exactly once."""
    parent = queue.enqueue(RUNNER, "echo", {})
    # Deferred, then queued when its parent is done: one status (queued) for the API.
    queue.enqueue(RUNNER, "echo", {}, depends_on=parent)
    queue.enqueue(RUNNER, "fail", {"message": "again"}, retry=Retry(max=1))
    canceled = queue.enqueue(RUNNER, "echo", {})
    job_class.fetch(canceled.id, connection=conn).cancel()
    run_worker(worker_class=worker_class)
    assert parse_transitions(conn.hgetall(keys.transitions_key())) == {
        ("new", "queued"): 4,
        ("queued", "canceled"): 1,
        ("queued", "running"): 4,
        ("running", "done"): 2,
        ("running", "queued"): 1,
        ("running", "failed"): 1,
    }
