"""POST /v1/toolkit/job/status: one job's status, timestamps, progress, result or error."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis
from flask.testing import FlaskClient
from rq.job import Job, JobStatus
from rq.results import Result

from api import jobs
from shared.index import StatusIndex
from tests.helpers import JOB_STATUS, assert_envelope, describe_job, plain_id, post, record, submit
from worker.main import TrackingMixin

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
DESCRIPTION_FIELDS = {
    "job_id",
    "job_status",
    "queue",
    "task",
    "created_at",
    "started_at",
    "ended_at",
    "progress",
}


def parse_iso(text: str) -> datetime:
    """Return the aware UTC datetime of an ISO 8601 'Z' timestamp, asserting its shape."""
    assert ISO_UTC.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def describe(client: FlaskClient, job_id: str) -> dict[str, Any]:
    """Return the description of `job_id`, asserting the envelope around it."""
    response = describe_job(client, job_id)
    assert response.keys() >= DESCRIPTION_FIELDS, response
    assert response["job_id"] == job_id
    assert response["queue"] == "default"
    return response


def assert_recent(text: str) -> datetime:
    """Assert `text` is an ISO UTC time within a minute of now; return it."""
    moment = parse_iso(text)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1), text
    return moment


def test_done_job_has_its_result(
    client: FlaskClient, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A finished echo job is "done", at 100%, with the payload as result and ordered times."""
    payload = {"greeting": "hello", "n": [1, 2, 3], "nested": {"ok": True}}
    job_id = submit(client, "echo", payload)
    run_worker()
    job = describe(client, job_id)
    assert job["job_status"] == "done"
    assert job["task"] == "echo"
    assert job["progress"] == 100
    assert job["result"] == payload
    assert "error" not in job
    created = assert_recent(job["created_at"])
    started = assert_recent(job["started_at"])
    ended = assert_recent(job["ended_at"])
    assert created <= started <= ended


def test_failed_job_has_its_error(
    client: FlaskClient, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A failed job is "failed" with an error naming the task's message, and no result."""
    job_id = submit(client, "fail", {"message": "the disk is on fire"})
    run_worker()
    job = describe(client, job_id)
    assert job["job_status"] == "failed"
    assert job["task"] == "fail"
    assert "the disk is on fire" in job["error"]
    assert "TaskFailedError" in job["error"]
    assert "result" not in job
    assert_recent(job["ended_at"])


def test_queued_job_has_not_started(client: FlaskClient) -> None:
    """A waiting job is "queued" with progress 0 and no start or end time."""
    job_id = submit(client, "sleep", {"seconds": 1})
    job = describe(client, job_id)
    assert job["job_status"] == "queued"
    assert job["task"] == "sleep"
    assert job["progress"] == 0
    assert job["started_at"] is None
    assert job["ended_at"] is None
    assert_recent(job["created_at"])
    assert "result" not in job and "error" not in job


def test_running_status_comes_from_the_job(client: FlaskClient, index: StatusIndex) -> None:
    """A job whose recorded status is started is reported "running"."""
    job_id = submit(client, "sleep", {"seconds": 1})
    record(index, job_id, JobStatus.STARTED)
    assert describe(client, job_id)["job_status"] == "running"


def test_unknown_job_is_404(client: FlaskClient) -> None:
    """A well-formed id no job has is 404 "Job not found", echoing the id."""
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": "no-such-job_123"}), 404)
    assert body["message"] == "Job not found"
    assert body["job_id"] == "no-such-job_123"
    assert body["response"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"job_id": None},
        {"job_id": 12},
        {"job_id": True},
        {"job_id": ["abc"]},
        {"job_id": {"id": "abc"}},
        {"job_id": ""},
        {"job_id": "a" * 129},
        {"job_id": "../x"},
        {"job_id": "a/b"},
        {"job_id": "a\\b"},
        {"job_id": "*"},
        {"job_id": "?"},
        {"job_id": "[a]"},
        {"job_id": "jöb"},
        {"job_id": "a b"},
        {"job_id": " abc"},
        {"job_id": "abc\n"},
        {"job_id": "rq:job:abc"},
    ],
    ids=lambda body: plain_id(body.get("job_id", "<missing>"))[:20],
)
def test_malformed_job_id_is_400(client: FlaskClient, body: dict[str, Any]) -> None:
    """A missing, non-string or malformed job_id is refused with 400 before any lookup."""
    reply = assert_envelope(post(client, JOB_STATUS, body), 400)
    assert "job_id" in reply["message"]
    assert reply["response"] is None


def test_longest_job_id_is_well_formed(client: FlaskClient) -> None:
    """A 128-character id of allowed characters is looked up (404), not refused."""
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": "a-Z_9" * 25 + "xyz"}), 404)
    assert body["message"] == "Job not found"


CREATED = datetime(2026, 1, 2, 3, 4, 5, 678901)
STARTED = datetime(2026, 1, 2, 3, 4, 6, 999999)
ENDED = datetime(2026, 1, 2, 3, 4, 7, 0)


def job_with(
    fake: fakeredis.FakeRedis, status: JobStatus | None, meta: dict[str, Any] | None = None
) -> Job:
    """Return a job on `fake` in `status`, with the three distinct timestamps above."""
    job = Job(id="job-1", connection=fake)
    job.origin = "default"
    job._status = status
    job.meta = {"task": "echo"} if meta is None else meta
    job.created_at, job.started_at, job.ended_at = CREATED, STARTED, ENDED
    return job


def fail_with(job: Job, exc_string: str) -> None:
    """Store a failure result with `exc_string` for `job`, as a worker does."""
    Result.create_failure(job, ttl=60, exc_string=exc_string)


def test_timestamps_are_iso_utc_truncated_to_the_millisecond(fake: fakeredis.FakeRedis) -> None:
    """Each timestamp is exactly YYYY-MM-DDTHH:MM:SS.mmmZ, microseconds cut, not rounded."""
    described = jobs.describe(job_with(fake, JobStatus.STARTED))
    assert described["created_at"] == "2026-01-02T03:04:05.678Z"
    assert described["started_at"] == "2026-01-02T03:04:06.999Z"
    assert described["ended_at"] == "2026-01-02T03:04:07.000Z"


def test_missing_timestamps_are_null(fake: fakeredis.FakeRedis) -> None:
    """A job not yet started or ended has null started_at and ended_at."""
    job = job_with(fake, JobStatus.QUEUED)
    job.started_at = job.ended_at = None
    described = jobs.describe(job)
    assert described["created_at"] == "2026-01-02T03:04:05.678Z"
    assert described["started_at"] is None
    assert described["ended_at"] is None


def test_description_of_a_running_job(fake: fakeredis.FakeRedis) -> None:
    """A running job is described by id, status, queue, task and its progress, no result/error."""
    described = jobs.describe(job_with(fake, JobStatus.STARTED, {"task": "sleep", "progress": 40}))
    assert described == {
        "job_id": "job-1",
        "job_status": "running",
        "queue": "default",
        "task": "sleep",
        "created_at": "2026-01-02T03:04:05.678Z",
        "started_at": "2026-01-02T03:04:06.999Z",
        "ended_at": "2026-01-02T03:04:07.000Z",
        "progress": 40,
    }


def test_job_without_a_status_is_queued(fake: fakeredis.FakeRedis) -> None:
    """A job whose status is not (yet) written is described as queued, progress 0."""
    described = jobs.describe(job_with(fake, None, {}))
    assert described["job_status"] == "queued"
    assert described["progress"] == 0
    assert described["task"] is None


def test_done_job_is_at_100_percent_with_its_result(fake: fakeredis.FakeRedis) -> None:
    """A done job reports progress 100 whatever its meta says, and its return value."""
    job = job_with(fake, JobStatus.FINISHED, {"task": "echo", "progress": 30})
    Result.create(job, Result.Type.SUCCESSFUL, ttl=60, return_value={"echo": 1})
    described = jobs.describe(job)
    assert described["job_status"] == "done"
    assert described["progress"] == 100
    assert described["result"] == {"echo": 1}
    assert "error" not in described


def test_failed_job_reports_the_last_line_of_its_traceback(fake: fakeredis.FakeRedis) -> None:
    """A failed job's error is the last line of its traceback, trailing blank lines ignored."""
    job = job_with(fake, JobStatus.FAILED, {"task": "fail", "progress": 10})
    fail_with(job, 'Traceback (most recent call last):\n  File "x"\nValueError: boom\n\n')
    described = jobs.describe(job)
    assert described["job_status"] == "failed"
    assert described["error"] == "ValueError: boom"
    assert described["progress"] == 10
    assert "result" not in described


def test_abandoned_job_error_says_the_worker_died(fake: fakeredis.FakeRedis) -> None:
    """A job failed because its worker died says so in front of RQ's own last line."""
    job = job_with(fake, JobStatus.FAILED)
    fail_with(job, "Traceback\nrq.exceptions.AbandonedJobError: lost\n")
    assert jobs.describe(job)["error"] == (
        "The worker running this job died (its heartbeat lapsed): "
        "rq.exceptions.AbandonedJobError: lost"
    )


@pytest.mark.parametrize("exc_string", ["", "   \n"])
def test_failed_job_with_an_empty_traceback_has_no_error(
    fake: fakeredis.FakeRedis, exc_string: str
) -> None:
    """A failure result whose traceback is empty or blank gives error null, never a crash."""
    job = job_with(fake, JobStatus.FAILED)
    fail_with(job, exc_string)
    assert jobs.describe(job)["error"] is None


def test_failed_job_without_a_result_has_null_error_unit(fake: fakeredis.FakeRedis) -> None:
    """A job marked failed with no stored result is described with error None."""
    described = jobs.describe(job_with(fake, JobStatus.FAILED))
    assert described["job_status"] == "failed"
    assert described["error"] is None


def test_failed_job_without_a_result_answers_200_with_null_error(
    client: FlaskClient, index: StatusIndex
) -> None:
    """POST job/status of a job set failed by hand (no RQ result) is 200 with error null."""
    job_id = submit(client)
    record(index, job_id, JobStatus.FAILED)
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}), 200)
    assert body["response"]["job_status"] == "failed"
    assert body["response"]["error"] is None


def test_timestamps_over_http_keep_milliseconds(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """Timestamps stored by RQ come back over HTTP as YYYY-MM-DDTHH:MM:SS.mmmZ."""
    job_id = submit(client)
    job = Job.fetch(job_id, connection=conn)
    job.created_at = CREATED
    job.save()
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}), 200)
    assert body["response"]["created_at"] == "2026-01-02T03:04:05.678Z"
    assert body["response"]["started_at"] is None
