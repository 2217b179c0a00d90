"""POST /v1/toolkit/jobs: enqueue a task of the catalog, within the queue limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq.job import Job, JobStatus

from shared import keys
from shared.index import StatusIndex
from shared.status import Status
from tests.helpers import JOBS, assert_envelope, indexed, plain_id, post, queue_length, submit


def test_accepts_and_enqueues(client: FlaskClient, conn: redis.Redis, index: StatusIndex) -> None:
    """A valid submission is 202 "processing"; the job is queued in RQ and in the index."""
    body = assert_envelope(post(client, JOBS, {"task": "echo", "payload": {"a": 1}}), 202)
    job_id = body["job_id"]
    assert body["message"] == "processing"
    assert body["response"] == {"job_id": job_id, "task": "echo", "job_status": "queued"}
    assert body["queue_length"] == 1
    assert body["max_queue_length"] == "unlimited"

    job = Job.fetch(job_id, connection=conn)
    assert job.get_status() == JobStatus.QUEUED
    assert job.meta["task"] == "echo"
    found = indexed(conn, job_id)
    assert found is not None and found[0] is Status.QUEUED
    assert queue_length(conn) == 1


def test_queue_length_counts_after_the_enqueue(client: FlaskClient) -> None:
    """queue_length in each 202 counts the waiting jobs including the new one."""
    lengths = [
        assert_envelope(post(client, JOBS, {"task": "echo"}), 202)["queue_length"] for _ in range(3)
    ]
    assert lengths == [1, 2, 3]


def test_client_id_is_echoed_and_kept(client: FlaskClient, conn: redis.Redis) -> None:
    """The client's id comes back in the envelope and is kept in the job's meta."""
    body = assert_envelope(post(client, JOBS, {"task": "echo", "id": "req-7"}), 202)
    assert body["id"] == "req-7"
    assert Job.fetch(body["job_id"], connection=conn).meta["client_id"] == "req-7"


def test_limit_is_reported(make_app: Callable[..., Flask]) -> None:
    """With a queue limit, max_queue_length is that integer."""
    client = make_app(max_queue_length=5).test_client()
    body = assert_envelope(post(client, JOBS, {"task": "echo"}), 202)
    assert body["max_queue_length"] == 5


def test_full_queue_is_429(make_app: Callable[..., Flask], conn: redis.Redis) -> None:
    """Past MAX_QUEUE_LENGTH the submission is 429 with Retry-After, and nothing is enqueued."""
    client = make_app(max_queue_length=2, retry_after_seconds=7).test_client()
    submit(client)
    submit(client)
    resp = post(client, JOBS, {"task": "echo", "id": "third"})
    body = assert_envelope(resp, 429)
    assert body["message"] == "MAX_QUEUE_LENGTH (2) reached"
    assert resp.headers["Retry-After"] == "7"
    assert body["queue_length"] == 2
    assert body["max_queue_length"] == 2
    assert body["id"] == "third"
    assert body["job_id"] is None
    assert queue_length(conn) == 2


def test_room_frees_up_when_jobs_leave(make_app: Callable[..., Flask], conn: redis.Redis) -> None:
    """Once a waiting job leaves the queue a new submission is accepted again."""
    client = make_app(max_queue_length=1).test_client()
    submit(client)
    assert_envelope(post(client, JOBS, {"task": "echo"}), 429)
    conn.delete(keys.rq_queue_key("default"))
    assert_envelope(post(client, JOBS, {"task": "echo"}), 202)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task": None},
        {"task": ""},
        {"task": 3},
        {"task": ["echo"]},
        {"task": "nope"},
        {"task": "x" * 101},
        {"task": "echo", "payload": []},
        {"task": "echo", "payload": "x"},
        {"task": "echo", "payload": None},
        {"task": "sleep"},
        {"task": "sleep", "payload": {"seconds": -1}},
        {"task": "sleep", "payload": {"seconds": 3600.5}},
        {"task": "sleep", "payload": {"seconds": True}},
        {"task": "sleep", "payload": {"seconds": "5"}},
        {"task": "sleep", "payload": {"seconds": None}},
        {"task": "fail"},
        {"task": "fail", "payload": {"message": 5}},
        {"task": "fail", "payload": {"message": "x" * 10_001}},
    ],
    ids=lambda body: repr(body)[:40],
)
def test_invalid_submission_is_400(
    client: FlaskClient, conn: redis.Redis, body: dict[str, Any]
) -> None:
    """An unknown or missing task, or a payload unfit for its task, is 400 and not enqueued."""
    reply = assert_envelope(post(client, JOBS, body), 400)
    assert reply["job_id"] is None
    assert queue_length(conn) == 0
    assert conn.keys("rq:job:*") == []


@pytest.mark.parametrize(
    "task",
    [
        "os.system",
        "worker.tasks.echo",
        "worker.registry.run_task",
        "shared.tasks.run_task",
        "shared.tasks.builtin.echo",
        "run_task",
        "__import__",
        "__class__",
        "__init__",
        "builtins.eval",
        "echo ",
        "Echo",
        "tasks",
    ],
)
def test_only_catalog_names_are_tasks(client: FlaskClient, conn: redis.Redis, task: str) -> None:
    """Import paths, dunders and near-misses are unknown tasks: 400, queue length unchanged."""
    submit(client)
    reply = assert_envelope(post(client, JOBS, {"task": task, "payload": {}}), 400)
    assert "unknown task" in reply["message"]
    assert reply["queue_length"] is None  # a refused request does not wait on Redis
    assert queue_length(conn) == 1


@pytest.mark.parametrize("seconds", [0, 0.25, 3600])
def test_sleep_seconds_bounds_are_inclusive(client: FlaskClient, seconds: float) -> None:
    """sleep accepts seconds from 0 to 3600 inclusive."""
    submit(client, "sleep", {"seconds": seconds})


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://",
        "http:///path",
        "example.com/hook",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/\nx",
        "https://example.com/" + "a" * 2048,
        5,
        True,
        ["https://example.com"],
        {"url": "https://example.com"},
    ],
    ids=lambda url: plain_id(url)[:30],
)
def test_bad_webhook_url_is_400(client: FlaskClient, conn: redis.Redis, url: Any) -> None:
    """A webhook_url that is not an absolute http(s) URL with a host is refused, not enqueued."""
    reply = assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 400)
    assert "webhook_url" in reply["message"]
    assert queue_length(conn) == 0


@pytest.mark.parametrize(
    "url", ["https://93.184.216.34/n8n/abc?x=1", "http://[2606:4700:4700::1111]:5678/webhook"]
)
def test_webhook_url_is_stored(client: FlaskClient, conn: redis.Redis, url: str) -> None:
    """A valid http(s) webhook_url at a public address is accepted and kept in the job's meta."""
    job_id = submit(client, "echo", webhook_url=url)
    assert Job.fetch(job_id, connection=conn).meta["webhook"]["url"] == url


PUBLIC_HOOK = "https://93.184.216.34/n8n/abc?x=1"


def test_meta_of_a_plain_submission(client: FlaskClient, conn: redis.Redis) -> None:
    """A job submitted with no id and no webhook has meta {task, progress 0}, nothing more."""
    job_id = submit(client, "echo", {"text": "hi"})
    assert Job.fetch(job_id, connection=conn).meta == {"task": "echo", "progress": 0}


def test_meta_keeps_the_client_id_and_the_webhook(client: FlaskClient, conn: redis.Redis) -> None:
    """The client's id and the webhook's delivery policy (from the settings) are kept in meta
    beside the task and progress 0."""
    job_id = submit(client, "echo", id="req-7", webhook_url=PUBLIC_HOOK)
    assert Job.fetch(job_id, connection=conn).meta == {
        "task": "echo",
        "progress": 0,
        "client_id": "req-7",
        "webhook": {
            "url": PUBLIC_HOOK,
            "max_attempts": 8,
            "backoff_seconds": 5,
            "timeout_seconds": 10.0,
            "retention_seconds": 7 * 24 * 3600,
        },
    }
