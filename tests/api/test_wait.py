"""Waiting on one job's end: POST (and GET) /v1/toolkit/job/status with `wait`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.client import PubSub
from rq.job import JobStatus
from werkzeug.test import TestResponse

from shared import keys
from shared.job import TrackedJob
from tests.helpers import (
    AUTH,
    JOB_STATUS,
    JOBS,
    assert_envelope,
    describe_job,
    post,
    submit,
    wait_until,
)
from worker.main import TrackingMixin

# Long beside how soon an end is answered, short beside the per-test timeout: an answer that
# comes only when the wait is over shows up as a failure, not as a hung test.
LONG_WAIT = 20
# How soon after a job's end a waiting request must have answered (the 2 cores are shared).
PROMPT = 5.0


def status_of(client: FlaskClient, job_id: str, wait: float) -> tuple[dict[str, Any], float]:
    """POST job/status with `wait`; return the asserted 200 envelope and the seconds it took."""
    started = time.monotonic()
    resp = post(client, JOB_STATUS, {"job_id": job_id, "wait": wait})
    elapsed = time.monotonic() - started
    body = assert_envelope(resp, 200)
    assert body["job_id"] == job_id
    assert body["message"] == "success"
    return body, elapsed


def subscribers(conn: redis.Redis, job_id: str) -> int:
    """Return how many connections listen on `job_id`'s end channel."""
    channel = keys.job_ended_channel(job_id)
    ((_, count),) = conn.pubsub_numsub(channel)
    return int(count)


def commands_during(conn: redis.Redis, action: Callable[[], object]) -> dict[str, int]:
    """Run `action` and return the Redis commands it sent, {command: calls} (from commandstats)."""
    conn.config_resetstat()
    action()
    stats = conn.info("commandstats")
    # The measuring commands themselves are not the request's.
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }


class Waiter:
    """A status request with `wait`, sent from a thread on a test client of its own."""

    def __init__(self, app: Flask, job_id: str, wait: float) -> None:
        self.app = app
        self.job_id = job_id
        self.wait = wait
        self.resp: TestResponse | None = None
        self.answered_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.resp = post(
            self.app.test_client(), JOB_STATUS, {"job_id": self.job_id, "wait": self.wait}
        )
        self.answered_at = time.monotonic()

    def start(self, conn: redis.Redis) -> Waiter:
        """Send the request and return once it listens for the job's end."""
        self.thread.start()
        wait_until(lambda: subscribers(conn, self.job_id) == 1)
        return self

    def answer(self) -> dict[str, Any]:
        """Return the asserted 200 envelope of the request, once it came."""
        self.thread.join(timeout=self.wait + 30)
        assert not self.thread.is_alive(), "the waiting request never answered"
        assert self.resp is not None
        return assert_envelope(self.resp, 200)


@pytest.fixture
def waiters(app: Flask) -> Iterator[list[Waiter]]:
    """Return a list to put Waiters in; each is joined on the way out, whatever happened."""
    started: list[Waiter] = []
    yield started
    for waiter in started:
        waiter.thread.join(timeout=waiter.wait + 30)


@pytest.mark.parametrize(
    ("wait", "named"),
    [
        (True, "a boolean"),
        (False, "a boolean"),
        ("5", "a string"),
        ([1], "an array"),
        ({"seconds": 1}, "an object"),
        (-1, "between 0 and 60"),
        (-0.001, "between 0 and 60"),
        (60.001, "between 0 and 60"),
        (61, "between 0 and 60"),
        (10**30, "between 0 and 60"),
    ],
)
def test_a_malformed_wait_is_refused(
    client: FlaskClient, conn: redis.Redis, wait: Any, named: str
) -> None:
    """A wait that is not a number of seconds from 0 to 60 is a 400 naming `wait`."""
    job_id = submit(client)
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id, "wait": wait}), 400)
    assert body["message"].startswith("wait must"), body["message"]
    assert named in body["message"], body["message"]
    assert subscribers(conn, job_id) == 0


@pytest.mark.parametrize("wait", ["abc", "", "-1", "61", "nan", "inf", "-inf", "1e999"])
def test_a_malformed_wait_in_the_query_is_refused(client: FlaskClient, wait: str) -> None:
    """GET job/status with a wait that is not 0 to 60 seconds is a 400 naming `wait`."""
    job_id = submit(client)
    resp = client.get(JOB_STATUS, query_string={"job_id": job_id, "wait": wait}, headers=AUTH)
    body = assert_envelope(resp, 400)
    assert body["message"].startswith("wait must"), body["message"]


def test_wait_zero_answers_at_once_without_subscribing(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """wait=0 answers with the current state at once, without listening for the end."""
    job_id = submit(client)
    answer: dict[str, Any] = {}

    def ask() -> None:
        answer.update(status_of(client, job_id, 0)[0])

    sent = commands_during(conn, ask)
    assert answer["response"]["job_status"] == "queued"
    assert "subscribe" not in sent, sent


def test_a_job_ending_during_the_wait_is_answered_at_its_end(
    app: Flask,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    waiters: list[Waiter],
) -> None:
    """A request waiting on a queued job answers as soon as the job is done, with its result."""
    job_id = submit(app.test_client(), "echo", {"said": "hello"})
    waiter = Waiter(app, job_id, LONG_WAIT)
    waiters.append(waiter)
    sent_at = time.monotonic()
    waiter.start(conn)
    run_worker()
    ended_at = time.monotonic()
    body = waiter.answer()
    assert body["response"]["job_status"] == "done"
    assert body["response"]["result"] == {"said": "hello"}
    assert waiter.answered_at - ended_at < PROMPT
    assert waiter.answered_at - sent_at < LONG_WAIT


@pytest.mark.parametrize(
    ("rq_status", "expected"),
    [
        (JobStatus.FINISHED, "done"),
        (JobStatus.FAILED, "failed"),
        (JobStatus.CANCELED, "canceled"),
        (JobStatus.STOPPED, "canceled"),
    ],
)
def test_every_end_wakes_a_waiting_request(
    app: Flask,
    conn: redis.Redis,
    waiters: list[Waiter],
    rq_status: JobStatus,
    expected: str,
) -> None:
    """Each end a job can reach, written by RQ's own set_status, ends a wait on it promptly."""
    job_id = submit(app.test_client())
    waiter = Waiter(app, job_id, LONG_WAIT)
    waiters.append(waiter)
    waiter.start(conn)
    TrackedJob.fetch(job_id, connection=conn).set_status(rq_status)
    ended_at = time.monotonic()
    body = waiter.answer()
    assert body["response"]["job_status"] == expected
    assert waiter.answered_at - ended_at < PROMPT


def test_a_job_starting_does_not_end_the_wait(
    app: Flask, conn: redis.Redis, waiters: list[Waiter]
) -> None:
    """A job that starts running is no end: the request goes on waiting until the job is done."""
    job_id = submit(app.test_client())
    waiter = Waiter(app, job_id, LONG_WAIT)
    waiters.append(waiter)
    waiter.start(conn)
    job = TrackedJob.fetch(job_id, connection=conn)
    job.set_status(JobStatus.STARTED)
    assert describe_job(app.test_client(), job_id)["job_status"] == "running"
    # A request woken by the start would answer within this half second ("running").
    waiter.thread.join(timeout=0.5)
    assert waiter.thread.is_alive(), waiter.resp and waiter.resp.get_json()
    assert subscribers(conn, job_id) == 1
    job.set_status(JobStatus.FINISHED)
    assert waiter.answer()["response"]["job_status"] == "done"


@pytest.mark.parametrize("task", ["echo", "fail"])
def test_wait_on_an_ended_job_answers_at_once(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    task: str,
) -> None:
    """The longest wait on a job that already ended answers at once with that end."""
    job_id = submit(client, task, {"message": "boom"} if task == "fail" else {})
    run_worker()
    answer: dict[str, Any] = {}

    def ask() -> None:
        body, elapsed = status_of(client, job_id, 60)
        answer.update(body, elapsed=elapsed)

    sent = commands_during(conn, ask)
    assert answer["response"]["job_status"] == ("done" if task == "echo" else "failed")
    assert answer["elapsed"] < PROMPT
    assert "subscribe" not in sent, sent


def test_a_wait_that_times_out_answers_with_the_current_state(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """A wait on a job that does not end answers after about that wait, with the job queued."""
    job_id = submit(client)
    body, elapsed = status_of(client, job_id, 1)
    assert body["response"]["job_status"] == "queued"
    assert 0.95 <= elapsed < 1 + PROMPT
    assert subscribers(conn, job_id) == 0


def test_a_fractional_wait_is_honoured(client: FlaskClient) -> None:
    """A wait of a fraction of a second lasts that fraction, not a rounded second."""
    job_id = submit(client)
    body, elapsed = status_of(client, job_id, 0.3)
    assert body["response"]["job_status"] == "queued"
    assert 0.28 <= elapsed < 0.95


def test_waiting_does_not_poll_redis(client: FlaskClient, conn: redis.Redis) -> None:
    """A wait sends a handful of Redis commands, as many for 3 s as for 1 s: no polling."""
    job_id = submit(client)
    short = commands_during(conn, lambda: status_of(client, job_id, 1))
    long = commands_during(conn, lambda: status_of(client, job_id, 3))
    assert short.get("subscribe") == 1, short
    assert long.get("subscribe") == 1, long
    assert sum(short.values()) <= 12, short
    # Each wait also reconnects its subscription: allow a command or two of connection setup.
    assert abs(sum(long.values()) - sum(short.values())) <= 2, (short, long)


def test_the_subscription_is_gone_after_the_answer(
    app: Flask, conn: redis.Redis, waiters: list[Waiter]
) -> None:
    """No subscription outlives its request, whether the wait ended with the job or timed out."""
    client = app.test_client()
    job_id = submit(client)
    status_of(client, job_id, 0.5)
    assert subscribers(conn, job_id) == 0
    waiter = Waiter(app, job_id, LONG_WAIT)
    waiters.append(waiter)
    waiter.start(conn)
    TrackedJob.fetch(job_id, connection=conn).set_status(JobStatus.FINISHED)
    waiter.answer()
    assert subscribers(conn, job_id) == 0
    assert conn.pubsub_channels(keys.job_ended_channel("*")) == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_end_around_the_subscription_is_not_missed(
    client: FlaskClient,
    conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """A job that ends between the request's first read and its subscription, or right after
    the subscription is sent, is answered at once, not at the end of the wait."""
    job_id = submit(client)
    subscribe = PubSub.subscribe

    def end_then_subscribe(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        if when == "before":
            TrackedJob.fetch(job_id, connection=conn).set_status(JobStatus.FINISHED)
        sent = subscribe(self, *args, **kwargs)
        if when == "after":
            TrackedJob.fetch(job_id, connection=conn).set_status(JobStatus.FINISHED)
        return sent

    monkeypatch.setattr(PubSub, "subscribe", end_then_subscribe)
    body, elapsed = status_of(client, job_id, LONG_WAIT)
    assert body["response"]["job_status"] == "done"
    assert elapsed < PROMPT


def test_the_get_form_answers_as_the_post_form(
    client: FlaskClient, run_worker: Callable[..., TrackingMixin]
) -> None:
    """GET job/status?job_id=...&wait=... gives the same answer as POST, waiting included."""
    job_id = submit(client, "echo", {"n": 1})
    resp = client.get(JOB_STATUS, query_string={"job_id": job_id, "wait": "0.3"}, headers=AUTH)
    queued = assert_envelope(resp, 200)
    assert queued["response"] == describe_job(client, job_id)
    assert queued["response"]["job_status"] == "queued"
    run_worker()
    resp = client.get(JOB_STATUS, query_string={"job_id": job_id, "wait": "60"}, headers=AUTH)
    done = assert_envelope(resp, 200)
    by_post, _ = status_of(client, job_id, 60)
    assert done["response"] == by_post["response"]
    assert done["response"]["job_status"] == "done"
    assert done["response"]["result"] == {"n": 1}
    assert done.keys() == by_post.keys()


def test_the_get_form_refuses_a_missing_or_unknown_job(client: FlaskClient) -> None:
    """GET job/status without a job_id is a 400; with an unknown one, a 404, even with a wait."""
    body = assert_envelope(client.get(JOB_STATUS, headers=AUTH), 400)
    assert "job_id" in body["message"]
    resp = client.get(JOB_STATUS, query_string={"job_id": "nope", "wait": "5"}, headers=AUTH)
    assert assert_envelope(resp, 404)["job_id"] == "nope"


def test_an_unknown_job_is_not_waited_on(client: FlaskClient) -> None:
    """POST job/status with a wait on an unknown job is a 404 at once."""
    started = time.monotonic()
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": "nope", "wait": LONG_WAIT}), 404)
    assert body["job_id"] == "nope"
    assert time.monotonic() - started < PROMPT


def test_the_accepted_answer_points_at_the_status_and_when_to_ask(
    make_app: Callable[..., Flask],
) -> None:
    """A 202 names where to ask for the job (Location, the GET form) and when (Retry-After)."""
    client = make_app(poll_after_seconds=7).test_client()
    resp = post(client, JOBS, {"task": "echo", "payload": {}})
    body = assert_envelope(resp, 202)
    job_id = body["job_id"]
    assert resp.headers["Retry-After"] == "7"
    location = resp.headers["Location"]
    assert location == f"{JOB_STATUS}?job_id={job_id}"
    followed = assert_envelope(client.get(location, headers=AUTH), 200)
    assert followed["response"]["job_id"] == job_id


def test_retry_after_defaults_to_two_seconds(client: FlaskClient) -> None:
    """Without POLL_AFTER_SECONDS, a 202 asks the client to poll again after 2 seconds."""
    resp = post(client, JOBS, {"task": "echo", "payload": {}})
    assert_envelope(resp, 202)
    assert resp.headers["Retry-After"] == "2"
