"""POST /v1/toolkit/job/status: one job's status, timestamps, progress, result or error."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from rq.job import JobStatus

from shared.index import StatusIndex
from tests.api.helpers import JOB_STATUS, assert_envelope, post, submit
from tests.support import record
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
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}), 200)
    assert body["job_id"] == job_id
    assert body["message"] == "success"
    response: dict[str, Any] = body["response"]
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
    ids=lambda body: repr(body.get("job_id", "<missing>"))[:20],
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


def test_requires_the_api_key(client: FlaskClient) -> None:
    """Without the key the job is not described: 401."""
    job_id = submit(client)
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}, headers={}), 401)
    assert body["message"] == "Unauthorized"
    assert body["response"] is None
