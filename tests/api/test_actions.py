"""POST /v1/toolkit/job/cancel and /v1/toolkit/job/retry: RQ's own operations, answered in the
envelope, counted in /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from werkzeug.test import TestResponse

from api import actions
from api.context import EXTENSION
from shared import keys
from shared.job import TrackedJob
from shared.settings import Settings
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import (
    AUTH,
    JOB_CANCEL,
    JOB_RETRY,
    JOB_STATUS,
    JOBS,
    assert_envelope,
    describe_job,
    index_status,
    post,
    queue_length,
    scrape,
    submit,
    wait_until,
)
from worker.main import TrackingMixin, build_worker

ACTIONS = "toolkit_jobs_job_actions_total"
OUTCOMES = (
    ("cancel", "canceled"),
    ("cancel", "stopped"),
    ("cancel", "stopping"),
    ("cancel", "conflict"),
    ("retry", "queued"),
    ("retry", "conflict"),
)
# Long beside how soon an end is answered, short beside the per-test timeout.
LONG_WAIT = 20
PROMPT = 5.0


def counts(client: FlaskClient) -> dict[tuple[str, str], float]:
    """Return the job action counters of /metrics, by (action, outcome)."""
    samples = scrape(client)
    return {
        pair: samples[(ACTIONS, (("action", pair[0]), ("outcome", pair[1])))] for pair in OUTCOMES
    }


class Tally:
    """The job action counters of /metrics, and how far each moved since `restart()`."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.before = counts(client)

    def restart(self) -> None:
        """Count from now on."""
        self.before = counts(self.client)

    def moved(self) -> dict[tuple[str, str], float]:
        """Return each counter that moved since the start, with how much."""
        after = counts(self.client)
        return {
            pair: after[pair] - self.before[pair]
            for pair in OUTCOMES
            if after[pair] != self.before[pair]
        }


@pytest.fixture
def tally(client: FlaskClient) -> Tally:
    """Return the job action counters, counting from the start of the test."""
    return Tally(client)


def act(client: FlaskClient, path: str, job_id: Any, code: int) -> dict[str, Any]:
    """POST {"job_id": job_id} to `path`; assert the envelope with `code` and return it."""
    body = assert_envelope(post(client, path, {"job_id": job_id}), code)
    if code in (200, 202, 404, 409):
        assert body["job_id"] == job_id
    return body


def rq_job(conn: redis.Redis, job_id: str) -> Job:
    """Return RQ's own view of the job."""
    return Job.fetch(job_id, connection=conn)


def waiting_ids(conn: redis.Redis) -> list[bytes | str]:
    """Return the ids waiting in the default queue, as Redis gives them."""
    return list(conn.lrange(keys.rq_queue_key("default"), 0, -1))


def mark_running(conn: redis.Redis, job_id: str) -> Job:
    """Mark the job started by a worker (its name set, as a work-horse sets it) that never acts
    on a stop."""
    job = TrackedJob.fetch(job_id, connection=conn)
    job.worker_name = "absent-worker"
    job.save()
    job.set_status(JobStatus.STARTED)
    return job


def subscribers(conn: redis.Redis, job_id: str) -> int:
    """Return how many connections listen on `job_id`'s end channel."""
    ((_, count),) = conn.pubsub_numsub(keys.job_ended_channel(job_id))
    return int(count)


class InThread:
    """One POST sent from a thread on a test client of its own."""

    def __init__(self, app: Flask, path: str, body: dict[str, Any]) -> None:
        self.resp: TestResponse | None = None
        self.thread = threading.Thread(
            target=self._run, args=(app, path, body), daemon=True, name=path
        )
        self.thread.start()

    def _run(self, app: Flask, path: str, body: dict[str, Any]) -> None:
        self.resp = post(app.test_client(), path, body)

    def answer(self) -> TestResponse:
        """Return the response, once it came."""
        self.thread.join(timeout=LONG_WAIT + 30)
        assert not self.thread.is_alive(), "the request never answered"
        assert self.resp is not None
        return self.resp


def ended_job(client: FlaskClient, run_worker: Callable[..., TrackingMixin], end: str) -> str:
    """Return the id of a job that ended as `end` (done, failed or canceled)."""
    if end == "canceled":
        job_id = submit(client)
        act(client, JOB_CANCEL, job_id, 200)
        return job_id
    job_id = submit(client, "fail" if end == "failed" else "echo", {"message": "boom"})
    run_worker()
    assert describe_job(client, job_id)["job_status"] == end
    return job_id


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_of_a_waiting_job_cancels_it_for_good(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    tally: Tally,
) -> None:
    """A waiting job canceled leaves the queue, is canceled in RQ, its registry and the index,
    and no worker ever runs it."""
    job_id = submit(client, "echo", {"n": 1})
    other = submit(client, "echo", {"n": 2})
    body = act(client, JOB_CANCEL, job_id, 200)
    assert body["message"] == "canceled"
    assert body["response"]["job_status"] == "canceled"
    assert rq_job(conn, job_id).get_status() == JobStatus.CANCELED
    assert job_id in CanceledJobRegistry("default", connection=conn).get_job_ids()
    assert index_status(conn, job_id) is Status.CANCELED
    assert waiting_ids(conn) == [other.encode()]
    assert tally.moved() == {("cancel", "canceled"): 1}
    run_worker()
    assert describe_job(client, other)["job_status"] == "done"
    job = describe_job(client, job_id)
    assert job["job_status"] == "canceled"
    assert job["started_at"] is None
    assert rq_job(conn, job_id).latest_result() is None


def test_cancel_wakes_a_request_waiting_on_the_job(app: Flask, conn: redis.Redis) -> None:
    """A status request waiting on a job answers "canceled" as soon as the job is canceled."""
    client = app.test_client()
    job_id = submit(client)
    waiter = InThread(app, JOB_STATUS, {"job_id": job_id, "wait": LONG_WAIT})
    wait_until(lambda: subscribers(conn, job_id) == 1)
    act(client, JOB_CANCEL, job_id, 200)
    canceled_at = time.monotonic()
    body = assert_envelope(waiter.answer(), 200)
    assert body["response"]["job_status"] == "canceled"
    assert time.monotonic() - canceled_at < PROMPT


@pytest.mark.parametrize("end", ["done", "failed", "canceled"])
def test_cancel_of_an_ended_job_is_a_conflict(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    tally: Tally,
    end: str,
) -> None:
    """Canceling a job that is done, failed or canceled is a 409 naming its status, and the job
    keeps its end."""
    job_id = ended_job(client, run_worker, end)
    before = describe_job(client, job_id)
    tally.restart()
    body = act(client, JOB_CANCEL, job_id, 409)
    assert body["message"] == f"Job already {end}: nothing to cancel"
    assert describe_job(client, job_id) == before
    assert index_status(conn, job_id) is Status(end)
    assert tally.moved() == {("cancel", "conflict"): 1}


def test_cancel_of_a_running_job_its_worker_does_not_stop_is_accepted(
    client: FlaskClient,
    conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    """A running job whose worker does not stop it within the stop wait gets 202 "stop
    requested", and stays running."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 0.5)
    job_id = submit(client)
    mark_running(conn, job_id)
    started = time.monotonic()
    body = act(client, JOB_CANCEL, job_id, 202)
    elapsed = time.monotonic() - started
    assert body["message"].startswith("stop requested"), body["message"]
    assert body["response"]["job_status"] == "running"
    assert 0.45 <= elapsed < 0.5 + PROMPT
    assert index_status(conn, job_id) is Status.RUNNING
    assert subscribers(conn, job_id) == 0
    assert tally.moved() == {("cancel", "stopping"): 1}


def test_cancel_of_a_running_job_waits_for_its_stop(
    app: Flask,
    client: FlaskClient,
    conn: redis.Redis,
    tally: Tally,
) -> None:
    """A running job stopped during the cancel's wait is answered 200 "canceled" at the stop."""
    job_id = submit(client)
    job = mark_running(conn, job_id)
    cancel = InThread(app, JOB_CANCEL, {"job_id": job_id})
    wait_until(lambda: subscribers(conn, job_id) == 1)
    job.set_status(JobStatus.STOPPED)
    stopped_at = time.monotonic()
    body = assert_envelope(cancel.answer(), 200)
    assert time.monotonic() - stopped_at < PROMPT
    assert body["message"] == "canceled"
    assert body["job_id"] == job_id
    assert body["response"]["job_status"] == "canceled"
    assert tally.moved() == {("cancel", "stopped"): 1}


def test_cancel_of_a_running_job_that_finishes_meanwhile_is_a_conflict(
    app: Flask,
    client: FlaskClient,
    conn: redis.Redis,
    tally: Tally,
) -> None:
    """A running job that ends done while the cancel waits for its stop is a 409 "already done"."""
    job_id = submit(client)
    job = mark_running(conn, job_id)
    cancel = InThread(app, JOB_CANCEL, {"job_id": job_id})
    wait_until(lambda: subscribers(conn, job_id) == 1)
    job.set_status(JobStatus.FINISHED)
    body = assert_envelope(cancel.answer(), 409)
    assert body["message"] == "Job already done: nothing to cancel"
    assert body["job_id"] == job_id
    assert tally.moved() == {("cancel", "conflict"): 1}


def test_cancel_of_an_unknown_job_is_not_found(client: FlaskClient, tally: Tally) -> None:
    """Canceling a job id no job has is a 404, counted as no action."""
    body = act(client, JOB_CANCEL, "no-such-job", 404)
    assert body["message"] == "Job not found"
    assert tally.moved() == {}


# --- retry -----------------------------------------------------------------------------------


def test_retry_of_a_failed_job_runs_it_again(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    tally: Tally,
) -> None:
    """A failed job retried is queued at once under the same id, leaves the failed registry,
    and runs again (it fails again: a second run, later than the first)."""
    job_id = submit(client, "fail", {"message": "boom"})
    run_worker()
    first = describe_job(client, job_id)
    assert first["job_status"] == "failed"
    body = act(client, JOB_RETRY, job_id, 202)
    assert body["message"] == "processing"
    assert body["response"]["job_status"] == "queued"
    assert body["response"]["started_at"] is None and body["response"]["ended_at"] is None
    assert index_status(conn, job_id) is Status.QUEUED
    assert waiting_ids(conn) == [job_id.encode()]
    assert job_id not in FailedJobRegistry("default", connection=conn).get_job_ids()
    assert tally.moved() == {("retry", "queued"): 1}
    run_worker()
    second = describe_job(client, job_id)
    assert second["job_status"] == "failed"
    assert second["error"] == first["error"]
    assert second["started_at"] > first["ended_at"]
    assert len(list(rq_job(conn, job_id).results())) == 2
    assert index_status(conn, job_id) is Status.FAILED


def test_a_retried_job_waits_as_long_as_a_new_one(
    client: FlaskClient, conn: redis.Redis, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A retried job waiting in the queue has no expiry, like a job just submitted: it must not
    vanish before a worker takes it."""
    fresh = submit(client)
    assert conn.ttl(keys.rq_job_key(fresh)) == -1
    job_id = submit(client, "fail", {"message": "boom"})
    run_worker()
    act(client, JOB_RETRY, job_id, 202)
    assert index_status(conn, job_id) is Status.QUEUED
    # RQ's FailedJobRegistry.requeue keeps the failure_ttl expiry that the failure set.
    assert conn.ttl(keys.rq_job_key(job_id)) == -1


def test_retry_of_a_canceled_job_runs_it(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    tally: Tally,
) -> None:
    """A canceled job retried leaves the canceled registry, is queued, and runs to its result."""
    job_id = submit(client, "echo", {"n": 7})
    act(client, JOB_CANCEL, job_id, 200)
    body = act(client, JOB_RETRY, job_id, 202)
    assert body["response"]["job_status"] == "queued"
    assert index_status(conn, job_id) is Status.QUEUED
    assert job_id not in CanceledJobRegistry("default", connection=conn).get_job_ids()
    assert waiting_ids(conn) == [job_id.encode()]
    assert tally.moved() == {("cancel", "canceled"): 1, ("retry", "queued"): 1}
    run_worker()
    job = describe_job(client, job_id)
    assert job["job_status"] == "done"
    assert job["result"] == {"n": 7}


def test_retry_of_a_stopped_job_runs_it(
    client: FlaskClient, conn: redis.Redis, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A job its worker stopped (RQ: stopped, in the failed registry) can be retried and run."""
    job_id = submit(client, "echo", {"n": 3})
    job = mark_running(conn, job_id)
    conn.lrem(keys.rq_queue_key("default"), 0, job_id)
    # What RQ's worker writes when it stops a job: stopped, in the failed registry.
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.STOPPED, pipeline=pipe)
        FailedJobRegistry("default", connection=conn).add(job, ttl=600, pipeline=pipe)
        pipe.execute()
    assert describe_job(client, job_id)["job_status"] == "canceled"
    act(client, JOB_RETRY, job_id, 202)
    run_worker()
    assert describe_job(client, job_id)["result"] == {"n": 3}


@pytest.mark.parametrize("state", ["queued", "running", "done"])
def test_retry_of_a_job_that_did_not_fail_is_a_conflict(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    tally: Tally,
    state: str,
) -> None:
    """Retrying a queued, running or done job is a 409 naming its status; nothing is enqueued."""
    job_id = submit(client)
    if state == "running":
        mark_running(conn, job_id)
    if state == "done":
        run_worker()
    before = describe_job(client, job_id)
    length = queue_length(conn)
    body = act(client, JOB_RETRY, job_id, 409)
    assert body["message"] == f"Job is {state}: only a failed or canceled job can be retried"
    assert describe_job(client, job_id) == before
    assert queue_length(conn) == length
    assert tally.moved() == {("retry", "conflict"): 1}


def test_retry_of_a_failed_job_in_no_registry_is_a_conflict(
    client: FlaskClient,
    conn: redis.Redis,
    tally: Tally,
) -> None:
    """A job marked failed but in neither RQ registry to requeue it from is a 409, left alone."""
    job_id = submit(client)
    conn.lrem(keys.rq_queue_key("default"), 0, job_id)
    TrackedJob.fetch(job_id, connection=conn).set_status(JobStatus.FAILED)
    body = act(client, JOB_RETRY, job_id, 409)
    assert "no registry" in body["message"]
    assert queue_length(conn) == 0
    assert index_status(conn, job_id) is Status.FAILED
    assert tally.moved() == {("retry", "conflict"): 1}


def test_retry_of_an_unknown_job_is_not_found(client: FlaskClient, tally: Tally) -> None:
    """Retrying a job id no job has is a 404, counted as no action."""
    assert act(client, JOB_RETRY, "no-such-job", 404)["message"] == "Job not found"
    assert tally.moved() == {}


# --- both ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [JOB_CANCEL, JOB_RETRY])
@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "job_id is required"),
        ({"id": "x"}, "job_id is required"),
        ({"job_id": None}, "job_id must be a string"),
        ({"job_id": 12}, "job_id must be a string"),
        ({"job_id": "a.b"}, "job_id must be 1 to 128"),
        ({"job_id": "x" * 129}, "job_id must be 1 to 128"),
        ({"job_id": ""}, "job_id must be 1 to 128"),
        (None, "job_id is required"),
    ],
)
def test_a_bad_body_is_refused(
    client: FlaskClient,
    tally: Tally,
    path: str,
    body: Any,
    named: str,
) -> None:
    """Cancel or retry without a well-formed job_id is a 400 naming job_id."""
    answer = assert_envelope(post(client, path, body), 400)
    assert answer["message"].startswith(named), answer["message"]
    assert tally.moved() == {}


@pytest.mark.parametrize("path", [JOB_CANCEL, JOB_RETRY])
def test_the_actions_need_the_api_key(client: FlaskClient, conn: redis.Redis, path: str) -> None:
    """Cancel and retry without the API key are a 401, and the job is left alone."""
    job_id = submit(client)
    assert_envelope(post(client, path, {"job_id": job_id}, headers={}), 401)
    assert_envelope(
        post(client, path, {"job_id": job_id}, headers={"x-api-key": "not-the-key"}), 401
    )
    assert index_status(conn, job_id) is Status.QUEUED
    assert queue_length(conn) == 1


def test_every_outcome_is_counted_once(
    client: FlaskClient,
    conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    run_worker: Callable[..., TrackingMixin],
    tally: Tally,
) -> None:
    """Each cancel and retry outcome moves exactly its own counter, once per request."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 0.2)
    waiting = submit(client)
    act(client, JOB_CANCEL, waiting, 200)
    act(client, JOB_CANCEL, waiting, 409)
    act(client, JOB_RETRY, waiting, 202)
    act(client, JOB_RETRY, waiting, 409)
    run_worker()
    running = submit(client)
    mark_running(conn, running)
    act(client, JOB_CANCEL, running, 202)
    act(client, JOB_CANCEL, running, 202)
    assert tally.moved() == {
        ("cancel", "canceled"): 1,
        ("cancel", "conflict"): 1,
        ("retry", "queued"): 1,
        ("retry", "conflict"): 1,
        ("cancel", "stopping"): 2,
    }


# --- a job a worker has taken but not yet started ------------------------------------------------


def take(conn: redis.Redis, settings: Settings) -> tuple[TrackingMixin, Job, Queue]:
    """Pop the next job of the default queue as the service's worker does (RQ's own dequeue,
    into its intermediate list), without starting it; return the worker, the job and its queue."""
    worker = build_worker(settings, conn)
    taken = worker.dequeue_job_and_maintain_ttl(None)
    assert taken is not None, "nothing to take from the queue"
    job, queue = taken
    assert waiting_ids(conn) == []
    assert conn.lrange(queue.intermediate_queue_key, 0, -1) == [job.id.encode()]
    return worker, job, queue


def test_cancel_of_a_taken_job_never_cancels_it(
    client: FlaskClient,
    conn: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job a worker popped from its queue but has not started is not canceled (no 200, not in
    RQ's canceled registry); the worker then runs it to done, the index, RQ's status and RQ's
    registries agreeing."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 0.3)
    job_id = submit(client, "echo", {"n": 5})
    worker, job, queue = take(conn, settings)
    resp = post(client, JOB_CANCEL, {"job_id": job_id})
    assert resp.status_code != 200, resp.get_data(as_text=True)
    assert resp.get_json()["message"] != "canceled"
    canceled = CanceledJobRegistry("default", connection=conn)
    assert job_id not in canceled.get_job_ids()
    assert rq_job(conn, job_id).get_status() == JobStatus.QUEUED
    assert index_status(conn, job_id) is Status.QUEUED

    worker.execute_job(job, queue)
    described = describe_job(client, job_id)
    assert described["job_status"] == "done"
    assert described["result"] == {"n": 5}
    assert rq_job(conn, job_id).get_status() == JobStatus.FINISHED
    assert index_status(conn, job_id) is Status.DONE
    assert job_id in FinishedJobRegistry("default", connection=conn).get_job_ids()
    assert job_id not in canceled.get_job_ids()
    assert conn.llen(queue.intermediate_queue_key) == 0


def test_cancel_of_a_taken_job_is_a_stop_request(
    client: FlaskClient,
    conn: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    """A cancel of a job a worker popped but has not started answers 202 "stop requested" once
    the stop wait is over (it has not ended: no 409), counted as "stopping"."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 0.3)
    job_id = submit(client)
    take(conn, settings)
    started = time.monotonic()
    body = act(client, JOB_CANCEL, job_id, 202)
    elapsed = time.monotonic() - started
    assert body["message"].startswith("stop requested"), body["message"]
    assert body["response"]["job_status"] == "queued"
    assert 0.25 <= elapsed < 0.3 + PROMPT, elapsed
    assert tally.moved() == {("cancel", "stopping"): 1}


def test_a_taken_job_gets_the_stop_once_its_worker_starts_it(
    app: Flask,
    client: FlaskClient,
    conn: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    """A cancel of a job popped but not yet started keeps asking for its stop until the
    work-horse names its worker, sends RQ's stop command once then, and answers with the job's
    end (200 "canceled" when it is stopped)."""
    calls: list[str] = []

    def recording_stop(connection: redis.Redis, job_id: str, *args: Any, **kwargs: Any) -> None:
        try:
            send_stop_job_command(connection, job_id, *args, **kwargs)
        except InvalidJobOperation:
            calls.append("no worker yet")
            raise
        calls.append("sent")

    monkeypatch.setattr(actions, "send_stop_job_command", recording_stop)
    job_id = submit(client)
    worker, _, _ = take(conn, settings)
    cancel = InThread(app, JOB_CANCEL, {"job_id": job_id})

    def asking() -> bool:
        if not cancel.thread.is_alive():
            resp = cancel.answer()
            raise AssertionError(f"the cancel answered at once: {resp.get_data(as_text=True)}")
        return "no worker yet" in calls

    wait_until(asking, timeout=LONG_WAIT)
    # What the work-horse writes as it starts the job: its worker's name and `started`, at once.
    job = TrackedJob.fetch(job_id, connection=conn)
    with conn.pipeline() as pipe:
        job.prepare_for_execution(worker.name, pipe)
        pipe.execute()
    wait_until(lambda: "sent" in calls, timeout=LONG_WAIT)
    wait_until(lambda: subscribers(conn, job_id) == 1, timeout=LONG_WAIT)
    # What the worker writes when it stops the job.
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.STOPPED, pipeline=pipe)
        FailedJobRegistry("default", connection=conn).add(job, ttl=600, pipeline=pipe)
        pipe.execute()
    body = assert_envelope(cancel.answer(), 200)
    assert body["message"] == "canceled"
    assert body["response"]["job_status"] == "canceled"
    assert calls.count("sent") == 1
    assert calls[-1] == "sent"
    assert tally.moved() == {("cancel", "stopped"): 1}


class Colliding:
    """RQ's cancel, its first `times` calls finding the queue moved under their WATCH: another
    job is pushed onto the queue between the cancel's look and its transaction."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, queue: Queue, times: int) -> None:
        self.calls = 0
        self.pushed: list[str] = []
        real = TrackedJob.cancel

        def cancel(job: TrackedJob, *args: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls <= times:
                self.pushed.append(queue.enqueue(RUNNER, "echo", {"filler": self.calls}).id)
            real(job, *args, **kwargs)

        monkeypatch.setattr(TrackedJob, "cancel", cancel)


@pytest.mark.parametrize("collisions", [1, actions.CANCEL_TRIES - 1])
def test_a_cancel_that_collides_with_a_queue_change_looks_again(
    client: FlaskClient,
    conn: redis.Redis,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
    collisions: int,
) -> None:
    """A cancel whose transaction finds the queue changed (another job pushed meanwhile) looks
    again, and cancels the job within its CANCEL_TRIES looks."""
    colliding = Colliding(monkeypatch, queue, collisions)
    job_id = submit(client)
    body = act(client, JOB_CANCEL, job_id, 200)
    assert body["message"] == "canceled"
    assert colliding.calls == collisions + 1
    assert rq_job(conn, job_id).get_status() == JobStatus.CANCELED
    assert job_id in CanceledJobRegistry("default", connection=conn).get_job_ids()
    assert index_status(conn, job_id) is Status.CANCELED
    assert waiting_ids(conn) == [pushed.encode() for pushed in colliding.pushed]
    assert tally.moved() == {("cancel", "canceled"): 1}


def test_a_cancel_that_always_collides_gives_up_with_a_conflict(
    client: FlaskClient,
    conn: redis.Redis,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
) -> None:
    """A cancel whose every look finds the queue changed answers 409 after CANCEL_TRIES looks,
    and leaves the job waiting."""
    colliding = Colliding(monkeypatch, queue, 10**6)
    job_id = submit(client)
    body = act(client, JOB_CANCEL, job_id, 409)
    assert body["message"] == "The job changed state while being canceled: try again"
    assert colliding.calls == actions.CANCEL_TRIES
    assert rq_job(conn, job_id).get_status() == JobStatus.QUEUED
    assert waiting_ids(conn)[0] == job_id.encode()
    assert job_id not in CanceledJobRegistry("default", connection=conn).get_job_ids()
    assert tally.moved() == {("cancel", "conflict"): 1}


@pytest.mark.parametrize("change", ["done", "deleted"])
def test_a_job_changed_between_the_look_and_the_cancel_is_looked_at_again(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    monkeypatch: pytest.MonkeyPatch,
    tally: Tally,
    change: str,
) -> None:
    """A waiting job that a worker runs to done (or that is deleted) after the cancel read it
    as waiting is not canceled: the cancel looks again and answers 409 "already done" (404)."""
    real = actions._cancel_waiting
    calls: list[str] = []

    def changed_first(job: Job) -> actions.Waiting:
        if not calls:
            if change == "done":
                run_worker()
            else:
                TrackedJob.fetch(job.id, connection=conn).delete()
        calls.append(job.id)
        return real(job)

    monkeypatch.setattr(actions, "_cancel_waiting", changed_first)
    job_id = submit(client, "echo", {"n": 4})
    if change == "done":
        body = act(client, JOB_CANCEL, job_id, 409)
        assert body["message"] == "Job already done: nothing to cancel"
        assert describe_job(client, job_id)["result"] == {"n": 4}
        assert index_status(conn, job_id) is Status.DONE
        assert tally.moved() == {("cancel", "conflict"): 1}
    else:
        assert act(client, JOB_CANCEL, job_id, 404)["message"] == "Job not found"
        assert not conn.exists(keys.rq_job_key(job_id))
        assert tally.moved() == {}
    assert calls == [job_id]
    assert job_id not in CanceledJobRegistry("default", connection=conn).get_job_ids()


def test_a_job_started_under_the_cancels_transaction_is_not_canceled(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    """A job marked started between the cancel's look and its transaction (its queue list as it
    was) is not canceled under its worker: the cancel looks again and asks for its stop."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 0.3)
    real = TrackedJob.cancel
    calls: list[str] = []

    def started_first(job: TrackedJob, *args: Any, **kwargs: Any) -> None:
        if not calls:
            mark_running(conn, job.id)
        calls.append(job.id)
        real(job, *args, **kwargs)

    monkeypatch.setattr(TrackedJob, "cancel", started_first)
    job_id = submit(client)
    queued = waiting_ids(conn)
    body = act(client, JOB_CANCEL, job_id, 202)
    assert body["message"].startswith("stop requested"), body["message"]
    assert body["response"]["job_status"] == "running"
    assert calls == [job_id]
    assert waiting_ids(conn) == queued
    assert rq_job(conn, job_id).get_status() == JobStatus.STARTED
    assert job_id not in CanceledJobRegistry("default", connection=conn).get_job_ids()
    assert index_status(conn, job_id) is Status.RUNNING
    assert tally.moved() == {("cancel", "stopping"): 1}


def test_a_running_job_that_ends_as_its_stop_is_asked_is_a_conflict(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    """A running job that ends done as its stop is asked for, before the cancel listens for its
    end, is a 409 "already done": the cancel reads the end it missed, not a 202."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 2.0)

    def stop_as_it_finishes(connection: redis.Redis, job_id: str) -> None:
        send_stop_job_command(connection, job_id)
        TrackedJob.fetch(job_id, connection=conn).set_status(JobStatus.FINISHED)

    monkeypatch.setattr(actions, "send_stop_job_command", stop_as_it_finishes)
    job_id = submit(client)
    mark_running(conn, job_id)
    body = act(client, JOB_CANCEL, job_id, 409)
    assert body["message"] == "Job already done: nothing to cancel"
    assert index_status(conn, job_id) is Status.DONE
    assert tally.moved() == {("cancel", "conflict"): 1}


@pytest.mark.parametrize("state", ["running", "taken"])
def test_the_stop_wait_bounds_the_whole_cancel(
    client: FlaskClient,
    conn: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    state: str,
) -> None:
    """A cancel waits for the job's end only what is left of STOP_WAIT_SECONDS once its stop is
    asked for: nothing more when asking a taken job's worker used it all up."""
    stop_wait = 0.3
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", stop_wait)
    waits: list[float] = []
    real = actions.wait_for_end

    def recording(connection: redis.Redis, job_id: str, seconds: float, ended: Any) -> bool:
        waits.append(seconds)
        return real(connection, job_id, seconds, ended)

    monkeypatch.setattr(actions, "wait_for_end", recording)
    job_id = submit(client)
    if state == "running":
        mark_running(conn, job_id)
    else:
        take(conn, settings)
    body = act(client, JOB_CANCEL, job_id, 202)
    assert body["message"].startswith("stop requested"), body["message"]
    assert len(waits) == 1, waits
    if state == "running":
        assert 0 <= waits[0] <= stop_wait
    else:
        assert waits == [0.0]


# --- what a cancel leaves ----------------------------------------------------------------------


@pytest.mark.parametrize("naming", ["idempotency-key", "job_id"])
def test_a_canceled_job_expires_with_the_retention(
    make_app: Callable[..., Flask], conn: redis.Redis, naming: str
) -> None:
    """A canceled job's hash expires after the retention (its failure_ttl), not never: its
    Idempotency-Key or job_id answers with it until then, and is free once it is gone."""
    retention = 4000
    client = make_app(retention_seconds=retention).test_client()
    request: dict[str, Any] = {"task": "echo", "payload": {"n": 1}}
    headers = dict(AUTH)
    if naming == "job_id":
        request["job_id"] = "named-job"
    else:
        headers["Idempotency-Key"] = "order-77"
    job_id = assert_envelope(post(client, JOBS, request, headers=headers), 202)["job_id"]
    key = keys.rq_job_key(job_id)
    assert conn.ttl(key) == -1
    act(client, JOB_CANCEL, job_id, 200)
    assert retention - 5 <= conn.ttl(key) <= retention, conn.ttl(key)

    replay = post(client, JOBS, request, headers=headers)
    body = assert_envelope(replay, 202)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert body["job_id"] == job_id
    assert body["response"]["job_status"] == "canceled"

    # The retention over (the hash expired), the name makes a new job.
    conn.pexpire(key, 1)
    wait_until(lambda: not conn.exists(key))
    fresh = post(client, JOBS, request, headers=headers)
    body = assert_envelope(fresh, 202)
    assert "Idempotent-Replayed" not in fresh.headers
    assert body["job_id"] == job_id
    assert body["response"]["job_status"] == "queued"
    assert conn.ttl(key) == -1


def test_a_canceled_job_retried_no_longer_expires(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """A canceled job retried waits without an expiry again, as a new job does."""
    client = make_app(retention_seconds=4000).test_client()
    job_id = submit(client)
    act(client, JOB_CANCEL, job_id, 200)
    assert conn.ttl(keys.rq_job_key(job_id)) > 0
    act(client, JOB_RETRY, job_id, 202)
    assert conn.ttl(keys.rq_job_key(job_id)) == -1


def snapshot(conn: redis.Redis) -> dict[bytes, bytes | None]:
    """Return every key in Redis with its serialized value."""
    return {key: conn.dump(key) for key in sorted(conn.scan_iter(count=1000))}


def test_webhook_deliveries_are_not_jobs_of_the_api(
    make_app: Callable[..., Flask], conn: redis.Redis, settings: Settings
) -> None:
    """A webhook delivery job's id is no job of the API: its status (POST and GET), cancel and
    retry answer 404 "Job not found", and change nothing."""
    client = make_app(webhook_allow_private=True).test_client()
    job_id = submit(client, "echo", {}, webhook_url="http://127.0.0.1:9/hook")
    # A worker on the default queue only: the delivery stays in its own queue.
    build_worker(replace(settings, webhook_allow_private=True), conn).work(
        burst=True, with_scheduler=False
    )
    assert describe_job(client, job_id)["job_status"] == "done"
    hooks = keys.rq_queue_key(keys.webhook_queue_name("default"))
    [raw] = conn.lrange(hooks, 0, -1)
    delivery = raw.decode()
    assert delivery.startswith("webhook-")
    assert Job.fetch(delivery, connection=conn).origin == "default:webhooks"
    tally = Tally(client)
    before = snapshot(conn)
    answers = [
        post(client, JOB_STATUS, {"job_id": delivery}),
        post(client, JOB_STATUS, {"job_id": delivery, "wait": 1}),
        client.get(JOB_STATUS, query_string={"job_id": delivery}, headers=AUTH),
        post(client, JOB_CANCEL, {"job_id": delivery}),
        post(client, JOB_RETRY, {"job_id": delivery}),
    ]
    for resp in answers:
        body = assert_envelope(resp, 404)
        assert body["message"] == "Job not found"
        assert body["job_id"] == delivery
        assert body["response"] is None
    assert snapshot(conn) == before
    assert tally.moved() == {}


@pytest.mark.parametrize("path", [JOB_STATUS, JOB_CANCEL])
def test_a_job_deleted_while_a_request_waits_on_it_is_not_found(
    app: Flask, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A job deleted while a status request (wait=5) or a cancel waits on it is answered with a
    404 envelope, never a 500."""
    monkeypatch.setattr(actions, "STOP_WAIT_SECONDS", 5.0)
    client = app.test_client()
    job_id = submit(client)
    body: dict[str, Any] = {"job_id": job_id}
    if path == JOB_STATUS:
        body["wait"] = 5
    else:
        mark_running(conn, job_id)
    waiter = InThread(app, path, body)
    wait_until(lambda: subscribers(conn, job_id) == 1)
    TrackedJob.fetch(job_id, connection=conn).delete()
    answer = assert_envelope(waiter.answer(), 404)
    assert answer["message"] == "Job not found"
    assert answer["job_id"] == job_id
    # The 404 raised in the thread keeps the app's connections in a reference cycle: the garbage
    # collector could finalize a socket before its connection closes it (a ResourceWarning).
    app.extensions[EXTENSION].redis.connection_pool.disconnect()


def test_a_running_job_gone_before_its_stop_is_not_found(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running job deleted between the cancel's read and its stop command is a 404, not a 500."""
    job_id = submit(client)
    mark_running(conn, job_id)

    def gone(connection: redis.Redis, stopped: str) -> None:
        TrackedJob.fetch(stopped, connection=connection).delete()
        send_stop_job_command(connection, stopped)

    monkeypatch.setattr(actions, "send_stop_job_command", gone)
    body = assert_envelope(post(client, JOB_CANCEL, {"job_id": job_id}), 404)
    assert body["message"] == "Job not found"
    assert body["job_id"] == job_id
