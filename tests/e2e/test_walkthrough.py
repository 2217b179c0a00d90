"""The README walk: submit jobs over HTTP to real gunicorn + worker processes and poll them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import (
    ENVELOPE_FIELDS,
    call,
    free_port,
    jobs_status,
    post_job,
    running,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.e2e

ENVELOPE = set(ENVELOPE_FIELDS)
# The order in which a job's statuses may be observed; polling can skip any of them.
ORDER = ["queued", "running", "done"]


def test_echo_job_ends_done_with_its_payload_and_is_listed(env: dict[str, str]) -> None:
    """An echo job submitted over HTTP ends "done" with result == payload, and is listed done."""
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        payload = {"hello": "world", "count": 3, "nested": {"ok": True, "items": [1, 2]}}
        accepted = post_job(port, "echo", payload, id="my-request-1")
        assert accepted.status == 202, accepted.body
        assert set(accepted.body) >= ENVELOPE
        assert accepted.body["code"] == 202
        assert accepted.body["message"] == "processing"
        assert accepted.body["id"] == "my-request-1"
        assert accepted.body["queue_id"] == "default"
        assert accepted.body["max_queue_length"] == "unlimited"
        job_id = accepted.body["job_id"]
        expected = {"job_id": job_id, "task": "echo", "job_status": "queued"}
        assert accepted.body["response"] == expected

        described = wait_finished(port, job_id)
        assert described["job_status"] == "done"
        assert described["result"] == payload
        assert described["progress"] == 100
        assert described["task"] == "echo"
        assert described["queue"] == "default"
        assert described["created_at"] <= described["started_at"] <= described["ended_at"]

        # As in the README's curl: a form content type, and then no body at all.
        one = call(
            port,
            "POST",
            "/v1/toolkit/job/status",
            {"job_id": job_id},
            content_type="application/x-www-form-urlencoded",
        )
        assert one.status == 200, one.body
        assert one.body["job_id"] == job_id
        assert one.body["response"]["result"] == payload
        listing = call(port, "POST", "/v1/toolkit/jobs/status")
        assert listing.status == 200, listing.body
        assert listing.body["response"] == {job_id: "done"}


def test_sleep_job_moves_forward_through_its_statuses(env: dict[str, str]) -> None:
    """A sleep job is seen queued → running → done, never backwards, its progress never falling."""
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        job_id = submit_ok(port, "sleep", {"seconds": 1})
        seen: list[dict[str, Any]] = []

        def done() -> bool:
            reply = call(port, "POST", "/v1/toolkit/job/status", {"job_id": job_id})
            assert reply.status == 200, reply.body
            seen.append(reply.body["response"])
            return bool(reply.body["response"]["job_status"] == "done")

        wait_until(done, timeout=30, interval=0.05)
        statuses = [described["job_status"] for described in seen]
        assert all(status in ORDER for status in statuses), statuses
        positions = [ORDER.index(status) for status in statuses]
        assert positions == sorted(positions), statuses
        progress = [described["progress"] for described in seen]
        assert progress == sorted(progress), progress
        assert seen[-1]["progress"] == 100
        assert seen[-1]["result"] == {"slept": 1}


def test_fail_job_ends_failed_with_its_error_message(env: dict[str, str]) -> None:
    """A fail job ends "failed", its error naming the message, and is listed failed."""
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        job_id = submit_ok(port, "fail", {"message": "boom: the disk is on fire"})

        described = wait_finished(port, job_id)
        assert described["job_status"] == "failed"
        assert described["error"].endswith("TaskFailedError: boom: the disk is on fire")
        assert "result" not in described

        listing = jobs_status(port)
        assert listing.status == 200, listing.body
        assert listing.body["response"] == {job_id: "failed"}
