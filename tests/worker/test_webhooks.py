"""Webhook deliveries end to end: a job's end queues a signed delivery that an in-process worker
POSTs to a loopback receiver, retried with backoff, stopped by 410, refused at a private address."""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp
from standardwebhooks import Webhook

from shared import keys
from shared.delivery import WebhookPolicy, read_state
from shared.index import StatusIndex
from shared.job import TrackedJob
from shared.status import Status
from tests.helpers import (
    JOB_CANCEL,
    JOB_RETRY,
    WEBHOOK_SECRET,
    Hit,
    Receiver,
    assert_envelope,
    describe_job,
    index_view,
    plain_id,
    post,
    scrape,
    submit,
    wait_until,
)
from worker import webhooks
from worker.main import TrackingMixin
from worker.repair import repair_pass

HOOKS = keys.webhook_queue_name("default")
HOST_NAME = "hooks.example.com"
PUBLIC_ADDRESS = "93.184.216.34"

Worker = Callable[..., TrackingMixin]
AppMaker = Callable[..., Flask]


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def hook_client(make_app: AppMaker) -> FlaskClient:
    """Return a client of an app that accepts loopback webhooks and backs off 1 s."""
    return make_app(webhook_allow_private=True, webhook_backoff_seconds=1).test_client()


@pytest.fixture
def work(run_worker: Worker) -> Callable[..., TrackingMixin]:
    """Return a function running the burst worker, allowed to deliver to loopback."""

    def run(**changes: Any) -> TrackingMixin:
        changes.setdefault("webhook_allow_private", True)
        return run_worker(**changes)

    return run


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Return a running receiver that answers 200 to everything."""
    with Receiver() as running:
        yield running


def state(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return the delivery state of `job_id`, asserting there is one."""
    found = read_state(conn, job_id)
    assert found is not None, f"no delivery state for {job_id}"
    return found


def delivery_id(conn: redis.Redis, job_id: str) -> str:
    """Return the id of the delivery of `job_id`'s latest end."""
    raw = conn.hget(keys.delivery_state_key(job_id), "delivery")
    assert raw is not None
    return bytes(raw).decode()


def delivery_keys(conn: redis.Redis) -> list[str]:
    """Return every key of a delivery job RQ holds (its hash, and anything beside it)."""
    found = conn.scan_iter(match=f"{Job.redis_job_namespace_prefix}webhook-*")
    return sorted(key.decode() for key in found)


def outcomes(conn: redis.Redis) -> dict[str, int]:
    """Return the delivery outcome counts."""
    raw = conn.hgetall(keys.deliveries_key())
    return {k.decode(): int(v) for k, v in raw.items()}


def hooks_waiting(conn: redis.Redis) -> int:
    """Return how many deliveries wait in the webhooks queue."""
    return int(conn.llen(keys.rq_queue_key(HOOKS)))


def scheduled(conn: redis.Redis) -> list[str]:
    """Return the deliveries RQ scheduled for a later try."""
    return list(ScheduledJobRegistry(HOOKS, connection=conn).get_job_ids())


def move_due(conn: redis.Redis) -> None:
    """Wait until a scheduled delivery is due, then queue the due ones with RQ's scheduler."""
    registry = ScheduledJobRegistry(HOOKS, connection=conn)
    wait_until(lambda: registry.get_jobs_to_schedule(current_timestamp()), timeout=20)
    scheduler = RQScheduler([HOOKS], connection=conn)
    scheduler.prepare_registries([HOOKS])
    try:
        scheduler.enqueue_scheduled_jobs()
    finally:
        scheduler.connection.close()
    assert hooks_waiting(conn) >= 1


def verified(hit: Hit) -> dict[str, Any]:
    """Return the body of `hit` once the Standard Webhooks library verified its signature."""
    payload = Webhook(WEBHOOK_SECRET).verify(hit.body, hit.headers)
    assert isinstance(payload, dict)
    return payload


class Scripted:
    """A loopback HTTP server whose `answer(handler, stop)` writes each answer; records every
    request as (method, path), whatever the method."""

    def __init__(
        self, answer: Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]
    ):
        self.requests: list[tuple[str, str]] = []
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append((self.command, self.path))
                answer(self, server.stop)

            do_POST = do_GET = do_HEAD = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """Return the port it listens on."""
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        """Return the URL to give as webhook_url."""
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


# --- what is delivered -----------------------------------------------------------------------


def test_done_job_delivers_signed_envelope(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis, receiver: Receiver
) -> None:
    """A done job's end is POSTed once, signed per Standard Webhooks, as the toolkit envelope."""
    job_id = submit(hook_client, "echo", {"text": "hi"}, id="req-42", webhook_url=receiver.url)
    worker = work()
    assert len(receiver.hits) == 1
    hit = receiver.hits[0]
    assert hit.path == "/hook"
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["webhook-id"] == delivery_id(conn, job_id)
    assert hit.headers["webhook-signature"].startswith("v1,")
    body = verified(hit)
    described = describe_job(hook_client, job_id)
    assert body["code"] == 200
    assert body["id"] == "req-42"
    assert body["job_id"] == job_id
    assert body["response"] == described["result"] == {"text": "hi"}
    assert body["message"] == "success"
    assert body["job_status"] == "done"
    assert body["queue_id"] == "default"
    assert body["build_number"] == worker.settings.build_number
    assert body["queue_length"] == 0
    for field in ("run_time", "queue_time", "total_time"):
        assert isinstance(body[field], int | float) and not isinstance(body[field], bool)
        assert body[field] >= 0
    assert abs(body["total_time"] - (body["run_time"] + body["queue_time"])) < 2e-4
    # The in-process worker delivered it.
    assert body["pid"] == os.getpid()
    assert described["webhook"]["state"] == "delivered"
    assert described["webhook"]["attempts"] == 1
    assert described["webhook"]["last_status"] == 200
    assert described["webhook"]["delivered_at"] is not None
    assert outcomes(conn) == {"delivered": 1}


def test_failed_job_delivers_its_error(
    hook_client: FlaskClient, work: Worker, receiver: Receiver
) -> None:
    """A failed job delivers code 500, no response, the error in words and job_status failed."""
    job_id = submit(hook_client, "fail", {"message": "disk on fire"}, webhook_url=receiver.url)
    work()
    assert len(receiver.hits) == 1
    body = verified(receiver.hits[0])
    described = describe_job(hook_client, job_id)
    assert body["code"] == 500
    assert body["response"] is None
    assert "disk on fire" in body["message"]
    assert body["message"] == described["error"]
    assert body["job_status"] == "failed"
    assert body["job_id"] == job_id


def test_canceled_waiting_job_delivers_499(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis, receiver: Receiver
) -> None:
    """A waiting job canceled with RQ's own cancel delivers job_status canceled with code 499."""
    job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
    TrackedJob.fetch(job_id, connection=conn).cancel()
    work()
    assert len(receiver.hits) == 1
    body = verified(receiver.hits[0])
    assert body["code"] == 499
    assert body["job_status"] == "canceled"
    assert body["message"] == "canceled"
    assert body["response"] is None


def test_same_end_recorded_twice_is_delivered_once(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis, receiver: Receiver
) -> None:
    """An end recorded twice (RQ writes a stop twice) queues one delivery and leaves no orphan."""
    job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
    # Out of the queue, so that the worker below runs only the delivery.
    conn.lrem(keys.rq_queue_key("default"), 0, job_id)
    job = TrackedJob.fetch(job_id, connection=conn)
    job.set_status(JobStatus.STOPPED)
    first = delivery_keys(conn)
    job.set_status(JobStatus.STOPPED)
    assert hooks_waiting(conn) == 1
    assert len(first) == 1
    assert delivery_keys(conn) == first
    work()
    assert len(receiver.hits) == 1
    assert verified(receiver.hits[0])["job_status"] == "canceled"


def test_retried_job_is_delivered_again(
    hook_client: FlaskClient, work: Worker, receiver: Receiver
) -> None:
    """A job retried after failing delivers its new end too, under a new webhook-id."""
    job_id = submit(hook_client, "fail", {"message": "again"}, webhook_url=receiver.url)
    work()
    assert len(receiver.hits) == 1
    assert_envelope(post(hook_client, JOB_RETRY, {"job_id": job_id}), 202)
    assert describe_job(hook_client, job_id)["webhook"]["state"] == "waiting"
    work()
    assert len(receiver.hits) == 2
    first, second = receiver.hits
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert [verified(hit)["job_status"] for hit in receiver.hits] == ["failed", "failed"]


# --- retries and their ends ------------------------------------------------------------------


def test_failed_tries_are_retried_until_delivered(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis
) -> None:
    """A receiver answering 500 twice then 200 gets 3 tries; the status shows each retry."""
    with Receiver(answers=[500, 500], then=200) as receiver:
        job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
        work()
        retrying = describe_job(hook_client, job_id)["webhook"]
        assert retrying["state"] == "retrying"
        assert retrying["attempts"] == 1
        assert retrying["last_status"] == 500
        assert retrying["last_error"].startswith("HTTP 500")
        assert retrying["next_attempt_at"] is not None
        assert retrying["delivered_at"] is None
        move_due(conn)
        work()
        assert state(conn, job_id)["attempts"] == 2
        assert state(conn, job_id)["state"] == "retrying"
        move_due(conn)
        work()
        assert len(receiver.hits) == 3
    # Every try is the same delivery, signed afresh.
    assert len({hit.headers["webhook-id"] for hit in receiver.hits}) == 1
    for hit in receiver.hits:
        verified(hit)
    final = describe_job(hook_client, job_id)["webhook"]
    assert final["state"] == "delivered"
    assert final["attempts"] == 3
    assert final["last_status"] == 200
    assert final["last_error"] is None
    assert final["next_attempt_at"] is None
    assert final["delivered_at"] is not None
    assert scheduled(conn) == []
    assert outcomes(conn) == {"failed": 2, "delivered": 1}
    samples = scrape(hook_client)
    total = "toolkit_jobs_webhook_deliveries_total"
    assert samples[(total, (("outcome", "failed"),))] == 2
    assert samples[(total, (("outcome", "delivered"),))] == 1
    assert samples[(total, (("outcome", "gave_up"),))] == 0


def test_gone_stops_for_good(hook_client: FlaskClient, work: Worker, conn: redis.Redis) -> None:
    """A 410 ends the delivery after one try ("gone"), though tries remain."""
    with Receiver(answers=[410], then=200) as receiver:
        job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
        work()
        assert len(receiver.hits) == 1
    found = state(conn, job_id)
    assert found["state"] == "gone"
    assert found["attempts"] == 1
    assert found["last_status"] == 410
    assert found["next_attempt_at"] is None
    assert scheduled(conn) == []
    assert hooks_waiting(conn) == 0
    assert outcomes(conn) == {"gone": 1}


def test_silent_receiver_times_out(make_app: AppMaker, work: Worker, conn: redis.Redis) -> None:
    """A receiver that never answers fails the try with a timeout, within about the timeout."""
    client = make_app(
        webhook_allow_private=True, webhook_timeout_seconds=0.5, webhook_max_attempts=1
    ).test_client()
    with Receiver(answers=["hang"]) as receiver:
        job_id = submit(client, "echo", {}, webhook_url=receiver.url)
        started = time.monotonic()
        work()
        took = time.monotonic() - started
        assert len(receiver.hits) == 1
    found = state(conn, job_id)
    assert found["state"] == "gave_up"
    assert "within 0.5 s" in found["last_error"]
    assert found["last_status"] is None
    # Far below the delivery job's own RQ timeout (3 x 0.5 + 10 s): the socket's timeout ended it.
    assert took < 6, took


def test_last_failed_try_gives_up(make_app: AppMaker, work: Worker, conn: redis.Redis) -> None:
    """With 2 attempts and a receiver always 503, both tries fail and the delivery gives up,
    ending in RQ's failed registry of the webhooks queue."""
    client = make_app(
        webhook_allow_private=True, webhook_backoff_seconds=1, webhook_max_attempts=2
    ).test_client()
    with Receiver(then=503) as receiver:
        job_id = submit(client, "echo", {}, webhook_url=receiver.url)
        work()
        assert state(conn, job_id)["state"] == "retrying"
        move_due(conn)
        work()
        assert len(receiver.hits) == 2
    found = state(conn, job_id)
    assert found["state"] == "gave_up"
    assert found["attempts"] == 2
    assert found["last_status"] == 503
    assert found["next_attempt_at"] is None
    assert scheduled(conn) == []
    assert hooks_waiting(conn) == 0
    failed = FailedJobRegistry(HOOKS, connection=conn).get_job_ids()
    assert failed == [delivery_id(conn, job_id)]
    assert outcomes(conn) == {"failed": 2, "gave_up": 1}


def test_redirect_is_not_followed(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis
) -> None:
    """A 302 is a failed try; the Location it names is never requested."""

    def redirect(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{server.port}/elsewhere")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with Scripted(redirect) as server:
        job_id = submit(hook_client, "echo", {}, webhook_url=server.url)
        work()
        assert server.requests == [("POST", "/hook")]
    found = state(conn, job_id)
    assert found["state"] == "retrying"
    assert found["last_status"] == 302
    assert "/elsewhere not followed" in found["last_error"]


def test_huge_answer_is_read_only_in_part(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis
) -> None:
    """A 2xx announcing a huge body is delivered after reading only its start."""
    sent: list[int] = []

    def flood(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1 << 30))
        handler.end_headers()
        chunk = b"x" * 65536
        try:
            while not stop.is_set() and len(sent) < (1 << 14):
                handler.wfile.write(chunk)
                sent.append(len(chunk))
        except OSError:  # the client hung up, as it should
            pass

    with Scripted(flood) as server:
        job_id = submit(hook_client, "echo", {}, webhook_url=server.url)
        work()
    assert state(conn, job_id)["state"] == "delivered"
    # The client hung up long before the gigabyte was through.
    assert sum(sent) < 1 << 29


def test_stalled_2xx_body_is_still_delivered(
    make_app: AppMaker, work: Worker, conn: redis.Redis
) -> None:
    """A 2xx whose body never comes is delivered: the status says the receiver took it."""
    client = make_app(
        webhook_allow_private=True, webhook_timeout_seconds=0.5, webhook_max_attempts=1
    ).test_client()

    def stall(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.flush()
        stop.wait(30)

    with Scripted(stall) as server:
        job_id = submit(client, "echo", {}, webhook_url=server.url)
        work()
        assert server.requests == [("POST", "/hook")]
    found = state(conn, job_id)
    assert (found["state"], found["last_status"], found["last_error"]) == ("delivered", 200, None)
    assert outcomes(conn) == {"delivered": 1}


def test_trickled_answer_ends_the_try_within_its_bound(
    make_app: AppMaker, work: Worker, conn: redis.Redis
) -> None:
    """A receiver trickling its answer a byte at a time is cut off by the try's bound (RQ's
    job timeout, 3 x timeout + 10 s), and the failed try is recorded as one (here the last)."""
    client = make_app(
        webhook_allow_private=True, webhook_timeout_seconds=0.1, webhook_max_attempts=1
    ).test_client()

    def trickle(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(503)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.flush()
        # A byte every 0.05 s: each read gets something well within the timeout.
        with contextlib.suppress(OSError):  # the client hung up, as it should
            while not stop.wait(0.05):
                handler.wfile.write(b"x")
                handler.wfile.flush()

    with Scripted(trickle) as server:
        job_id = submit(client, "echo", {}, webhook_url=server.url)
        started = time.monotonic()
        work()
        took = time.monotonic() - started
    policy = WebhookPolicy.of(TrackedJob.fetch(job_id, connection=conn))
    assert policy is not None
    bound = policy.attempt_seconds
    assert took < bound + 5, f"the try took {took:.1f} s, its bound is {bound} s"
    assert FailedJobRegistry(HOOKS, connection=conn).get_job_ids() == [delivery_id(conn, job_id)]
    found = state(conn, job_id)
    assert found["state"] == "gave_up", found
    assert found["last_error"], found
    assert outcomes(conn) == {"failed": 1, "gave_up": 1}


# --- addresses -------------------------------------------------------------------------------


class Resolver:
    """A fake `socket.getaddrinfo` answering for HOST_NAME from a script; counts its lookups."""

    def __init__(self, answers: list[str], then: str) -> None:
        self.answers = list(answers)
        self.then = then
        self.lookups = 0
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HOST_NAME:
            return self.real(host, port, *args, **kwargs)
        self.lookups += 1
        address = self.answers.pop(0) if self.answers else self.then
        if address == "nxdomain":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


def test_rebound_name_is_refused_at_send_time(
    make_app: AppMaker, run_worker: Worker, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name public at submission but loopback at send time is refused, and nothing is sent."""
    resolver = Resolver([PUBLIC_ADDRESS], then="127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    client = make_app(webhook_allow_private=False).test_client()
    with Receiver() as receiver:
        url = f"http://{HOST_NAME}:{receiver.server.server_port}/hook"
        job_id = submit(client, "echo", {}, webhook_url=url)
        run_worker(webhook_allow_private=False)
        assert receiver.hits == []
    found = state(conn, job_id)
    assert found["state"] == "refused"
    assert found["attempts"] == 1
    assert "127.0.0.1" in found["last_error"]
    assert scheduled(conn) == []
    assert hooks_waiting(conn) == 0
    assert outcomes(conn) == {"refused": 1}
    assert resolver.lookups == 2


def test_delivery_connects_to_the_address_it_checked(
    make_app: AppMaker, work: Worker, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each try resolves the name once and connects to that address, naming the host in Host."""
    resolver = Resolver([], then="127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    client = make_app(webhook_allow_private=True, webhook_backoff_seconds=1).test_client()
    with Receiver(answers=[500], then=200) as receiver:
        port = receiver.server.server_port
        job_id = submit(client, "echo", {}, webhook_url=f"http://{HOST_NAME}:{port}/hook")
        assert resolver.lookups == 1  # the API's check at submission
        work()
        assert resolver.lookups == 2
        move_due(conn)
        work()
        assert resolver.lookups == 3
        assert len(receiver.hits) == 2
    assert [hit.headers["host"] for hit in receiver.hits] == [f"{HOST_NAME}:{port}"] * 2
    assert state(conn, job_id)["state"] == "delivered"


def test_name_gone_at_send_time_is_retried(
    make_app: AppMaker, work: Worker, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that no longer resolves at send time fails the try, to be tried again later."""
    monkeypatch.setattr(socket, "getaddrinfo", Resolver([PUBLIC_ADDRESS], then="nxdomain"))
    client = make_app(webhook_allow_private=False).test_client()
    job_id = submit(client, "echo", {}, webhook_url=f"http://{HOST_NAME}/hook")
    work(webhook_allow_private=False)
    found = state(conn, job_id)
    assert found["state"] == "retrying"
    assert "does not resolve" in found["last_error"]
    assert found["next_attempt_at"] is not None
    assert len(scheduled(conn)) == 1
    assert outcomes(conn) == {"failed": 1}


def test_path_and_query_are_kept(make_app: AppMaker, work: Worker) -> None:
    """The POST goes to the webhook URL's own path and query."""
    client = make_app(webhook_allow_private=True).test_client()
    with Receiver() as receiver:
        url = receiver.url.replace("/hook", "/n8n/abc?token=x%20y&z=1")
        submit(client, "echo", {}, webhook_url=url)
        work()
    assert [hit.path for hit in receiver.hits] == ["/n8n/abc?token=x%20y&z=1"]


# --- deliveries and the index ----------------------------------------------------------------


def test_deliveries_stay_out_of_the_index(
    make_app: AppMaker, work: Worker, conn: redis.Redis, index: StatusIndex
) -> None:
    """Delivery jobs, waiting, finished or failed, never enter the index, repair pass or not."""
    client = make_app(webhook_allow_private=True, webhook_max_attempts=1).test_client()
    with Receiver(answers=[500], then=200) as receiver:
        failing = submit(client, "echo", {}, webhook_url=receiver.url)
        work()
        delivered = submit(client, "echo", {}, webhook_url=receiver.url)
        work()
    waiting = submit(client, "echo", {}, webhook_url=receiver.url)
    assert_envelope(post(client, JOB_CANCEL, {"job_id": waiting}), 200)
    assert state(conn, failing)["state"] == "gave_up"
    assert state(conn, delivered)["state"] == "delivered"
    assert state(conn, waiting)["state"] == "pending"
    assert FailedJobRegistry(HOOKS, connection=conn).get_job_ids()
    assert FinishedJobRegistry(HOOKS, connection=conn).get_job_ids()
    assert hooks_waiting(conn) == 1
    expected = {failing: Status.DONE, delivered: Status.DONE, waiting: Status.CANCELED}
    assert index_view(conn) == expected
    report = repair_pass(index)
    assert report.changed == 0, report
    assert index_view(conn) == expected


def test_no_webhook_url_queues_no_delivery(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis
) -> None:
    """A job submitted without webhook_url queues no delivery and shows no webhook state."""
    job_id = submit(hook_client, "echo", {})
    assert "webhook" not in describe_job(hook_client, job_id)
    work()
    assert delivery_keys(conn) == []
    assert hooks_waiting(conn) == 0
    assert read_state(conn, job_id) is None
    assert "webhook" not in describe_job(hook_client, job_id)


def test_state_before_and_after_the_end(
    hook_client: FlaskClient, work: Worker, receiver: Receiver
) -> None:
    """The status shows "waiting" before the job ends, "pending" once it ended, undelivered."""
    job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
    assert describe_job(hook_client, job_id)["webhook"] == {
        "state": "waiting",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
        "next_attempt_at": None,
    }
    assert_envelope(post(hook_client, JOB_CANCEL, {"job_id": job_id}), 200)
    assert describe_job(hook_client, job_id)["webhook"] == {
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
        "next_attempt_at": None,
    }
    work()
    assert describe_job(hook_client, job_id)["webhook"]["state"] == "delivered"
    assert len(receiver.hits) == 1


# --- late and stale reports ------------------------------------------------------------------


@pytest.mark.parametrize("ended", ["delivered", "gone", "refused", "gave_up"])
def test_a_late_report_never_overwrites_an_ended_delivery(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis, receiver: Receiver, ended: str
) -> None:
    """Once a delivery has ended, a late report of one of its tries (a work-horse left running
    by a worker killed outright) changes neither its state nor the outcome counts; only a new
    try's start moves it on (one more attempt)."""
    job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
    work()
    assert state(conn, job_id)["state"] == "delivered"
    key = keys.delivery_state_key(job_id)
    if ended != "delivered":
        conn.hset(key, "state", ended)
    before = conn.hgetall(key)
    counted = outcomes(conn)
    delivery = delivery_id(conn, job_id)
    current = Job.fetch(delivery, connection=conn)
    late = webhooks._State(conn, job_id, delivery)
    assert late.finish("gave_up", error="late") == "gave_up"
    late.finish("delivered", status=200, delivered_at=time.time())
    late.fail("late", current, last_try=True, status=503)
    late.fail("late", current, last_try=False, status=503)
    assert conn.hgetall(key) == before
    assert outcomes(conn) == counted

    assert late.update(count=True, state="delivering", next_attempt_at="") is True
    moved = state(conn, job_id)
    assert moved["state"] == "delivering"
    assert moved["attempts"] == 2
    late.fail("HTTP 503", current, last_try=False, status=503)
    assert state(conn, job_id)["state"] == "retrying"
    assert outcomes(conn) == {**counted, "failed": counted.get("failed", 0) + 1}


def test_a_report_of_an_older_end_leaves_the_newer_state_but_is_counted(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis, receiver: Receiver
) -> None:
    """A report from the delivery of an older end, the state now another delivery's, leaves
    that state alone (even a try's start), but its outcome is still counted."""
    job_id = submit(hook_client, "fail", {"message": "first"}, webhook_url=receiver.url)
    work()
    older = delivery_id(conn, job_id)
    assert state(conn, job_id)["state"] == "delivered"
    assert_envelope(post(hook_client, JOB_RETRY, {"job_id": job_id}), 202)
    assert_envelope(post(hook_client, JOB_CANCEL, {"job_id": job_id}), 200)
    newer = delivery_id(conn, job_id)
    assert newer != older
    key = keys.delivery_state_key(job_id)
    before = conn.hgetall(key)
    assert state(conn, job_id)["state"] == "pending"
    stale = webhooks._State(conn, job_id, older)
    current = Job.fetch(older, connection=conn)
    stale.update(count=True, state="delivering", next_attempt_at="")
    stale.finish("delivered", status=200, delivered_at=time.time())
    stale.fail("late", current, last_try=True, status=500)
    assert conn.hgetall(key) == before
    assert outcomes(conn) == {"delivered": 2, "failed": 1, "gave_up": 1}


# --- URLs HTTP cannot carry ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/café", "/hook?name=zoë", "/a\u0001b", "/a\u007fb", "/a b"], ids=plain_id
)
def test_a_url_http_cannot_carry_is_unsendable(receiver: Receiver, path: str) -> None:
    """post() refuses a URL with a non-ASCII or control character (API validation bypassed)
    with UnsendableError, sending nothing."""
    url = receiver.url.replace("/hook", path)
    with pytest.raises(webhooks.UnsendableError, match="webhook_url cannot be sent"):
        webhooks.post(url, b"{}", {}, allow_private=True, timeout=2)
    assert receiver.hits == []


def test_a_url_http_cannot_carry_is_refused_at_once(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis, receiver: Receiver
) -> None:
    """A delivery whose URL HTTP cannot carry (written into the job past the API's check) ends
    "refused" at its first try, without retries."""
    job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
    job = TrackedJob.fetch(job_id, connection=conn)
    job.meta["webhook"]["url"] = receiver.url + "/café"
    job.save_meta()
    work()
    assert receiver.hits == []
    found = state(conn, job_id)
    assert found["state"] == "refused"
    assert found["attempts"] == 1
    assert "cannot be sent" in found["last_error"]
    assert found["next_attempt_at"] is None
    assert outcomes(conn) == {"refused": 1}
    assert scheduled(conn) == []
    assert hooks_waiting(conn) == 0
    assert FinishedJobRegistry(HOOKS, connection=conn).get_job_ids() == [delivery_id(conn, job_id)]


# --- the bound of a whole try ----------------------------------------------------------------


class Trickler:
    """A loopback TCP server that takes one connection, sends `head` at once, then `trickle`
    one byte every `interval` seconds, then hangs up."""

    def __init__(self, interval: float, trickle: bytes, head: bytes = b"") -> None:
        self.interval = interval
        self.head = head
        self.trickle = trickle
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        """Return the URL to POST to."""
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            peer, _ = self.listener.accept()
            with peer:
                peer.settimeout(1)
                with contextlib.suppress(TimeoutError):
                    peer.recv(65536)
                peer.sendall(self.head)
                for byte in self.trickle:
                    if self.stop.wait(self.interval):
                        return
                    peer.sendall(bytes([byte]))

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=10)


# Header lines that take far longer to trickle than any try may last.
ENDLESS_HEADERS = b"X-Pad: y\r\n" * 10_000


def test_a_trickled_status_line_ends_the_try_within_three_timeouts() -> None:
    """A receiver that accepts the connection, then trickles its status line a byte every 0.1 s
    (each read well within the 0.3 s timeout), is cut off within about three times the timeout:
    post() raises DeliveryError saying it did not answer in full."""
    timeout = 0.3
    with Trickler(0.1, b"HTTP/1.1 200 OK\r\n" + ENDLESS_HEADERS) as trickler:
        started = time.monotonic()
        with pytest.raises(webhooks.DeliveryError) as caught:
            webhooks.post(trickler.url, b"{}", {}, allow_private=True, timeout=timeout)
        took = time.monotonic() - started
    assert "did not answer in full" in str(caught.value)
    # Cut by the whole try's deadline (3 x timeout), not before, and not long after.
    assert 3 * timeout - 0.05 <= took < 3 * timeout + 2, took


def test_a_status_line_cut_by_the_deadline_is_no_answer() -> None:
    """A status line the try's deadline cut off before its end (its code arrived, its line end
    never did) is no answer: post() raises DeliveryError, it does not take the code for a 2xx."""
    status_line = b"HTTP/1.1 200 " + b"O" * 1000 + b"\r\n"
    with (
        Trickler(0.02, status_line + ENDLESS_HEADERS) as trickler,
        pytest.raises(webhooks.DeliveryError, match="did not answer in full"),
    ):
        webhooks.post(trickler.url, b"{}", {}, allow_private=True, timeout=0.3)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 503 Busy\r\nContent-Length: 100000\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n",
        b"HTTP/1.0 503 Busy\r\nContent-Length: 100000\r\n\r\n",
    ],
    ids=["keep-alive", "connection-close", "http-1.0"],
)
def test_a_trickled_error_body_ends_the_try_within_three_timeouts(head: bytes) -> None:
    """A non-2xx answer whose body trickles in a byte every 0.05 s ends the try within about
    three times the timeout, whether the receiver keeps the connection open or closes it after
    the answer (HTTP/1.0, Connection: close)."""
    timeout = 0.3
    # 5 s of body, then the receiver hangs up: far past the try's bound.
    with Trickler(0.05, b"x" * 100, head=head) as trickler:
        started = time.monotonic()
        with contextlib.suppress(webhooks.DeliveryError):
            answer = webhooks.post(trickler.url, b"{}", {}, allow_private=True, timeout=timeout)
            assert answer.status == 503
        took = time.monotonic() - started
    assert took < 3 * timeout + 2, f"the try took {took:.1f} s"


# --- what a try records and logs -------------------------------------------------------------


def test_deliver_outside_an_rq_job_is_refused() -> None:
    """Called as a plain function, not by an RQ worker, deliver() raises RuntimeError saying it
    runs as an RQ job."""
    with pytest.raises(RuntimeError) as caught:
        webhooks.deliver("some-job", "done")
    assert str(caught.value) == "deliver runs as an RQ job"


def test_a_try_in_flight_shows_delivering(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis
) -> None:
    """While a try waits for the receiver's answer, the status shows it "delivering", counted
    as an attempt, with no next attempt."""
    seen: list[dict[str, Any]] = []
    job: dict[str, str] = {}

    def look(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        seen.append(state(conn, job["id"]))
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with Scripted(look) as server:
        job["id"] = submit(hook_client, "echo", {}, webhook_url=server.url)
        work()
        assert server.requests == [("POST", "/hook")]
    assert seen == [
        {
            "state": "delivering",
            "attempts": 1,
            "last_status": None,
            "last_error": None,
            "delivered_at": None,
            "next_attempt_at": None,
        }
    ]
    assert state(conn, job["id"])["state"] == "delivered"


def test_a_worker_without_the_secret_sends_nothing_and_says_why(
    make_app: AppMaker, work: Worker, conn: redis.Redis, receiver: Receiver
) -> None:
    """A worker with no WEBHOOK_SECRET sends nothing unsigned: the try fails with an error
    naming the variable, in the delivery state and in RQ's failure of the delivery job."""
    client = make_app(webhook_allow_private=True, webhook_max_attempts=1).test_client()
    job_id = submit(client, "echo", {}, webhook_url=receiver.url)
    work(webhook_secret=None)
    assert receiver.hits == []
    found = state(conn, job_id)
    assert found["state"] == "gave_up"
    assert found["last_error"] == (
        "WEBHOOK_SECRET is not set on the worker: nothing is sent unsigned"
    )
    assert found["last_status"] is None
    assert outcomes(conn) == {"failed": 1, "gave_up": 1}
    result = Job.fetch(delivery_id(conn, job_id), connection=conn).latest_result()
    assert result is not None and result.exc_string is not None
    assert result.exc_string.strip().endswith(f"DeliveryError: {found['last_error']}")


LONG_LOCATION = "http://elsewhere.example/" + "x" * 300


@pytest.mark.parametrize(
    ("status", "head", "error"),
    [
        (300, {}, "HTTP 300: redirect to ? not followed"),
        (
            307,
            {"Location": LONG_LOCATION},
            f"HTTP 307: redirect to {LONG_LOCATION[:200]} not followed",
        ),
        (399, {}, "HTTP 399: redirect to ? not followed"),
        (400, {}, "HTTP 400: refused"),
    ],
    ids=["300", "307-long-location", "399", "400"],
)
def test_an_answer_past_2xx_is_a_failed_try(
    hook_client: FlaskClient,
    work: Worker,
    conn: redis.Redis,
    status: int,
    head: dict[str, str],
    error: str,
) -> None:
    """Only 2xx delivers: from 300 on the try fails; a 3xx's error is the redirect not followed
    (its Location cut to 200 characters), a 4xx's the start of its body."""
    with Scripted(answer_with(status, head, b"refused")) as server:
        job_id = submit(hook_client, "echo", {}, webhook_url=server.url)
        work()
        assert server.requests == [("POST", "/hook")]
    found = state(conn, job_id)
    assert (found["state"], found["last_status"], found["last_error"]) == (
        "retrying",
        status,
        error,
    )
    assert outcomes(conn) == {"failed": 1}


@pytest.mark.parametrize("loss", ["deleted", "no webhook"])
def test_a_delivery_whose_job_is_gone_gives_up_at_once(
    hook_client: FlaskClient,
    work: Worker,
    conn: redis.Redis,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    loss: str,
) -> None:
    """A delivery whose job was deleted (or no longer carries a webhook) by the time it runs
    gives up at its first try, saying why in its state and its log line, without a retry and
    without sending anything."""
    caplog.set_level(logging.INFO, logger=webhooks.__name__)
    job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
    assert_envelope(post(hook_client, JOB_CANCEL, {"job_id": job_id}), 200)
    job = TrackedJob.fetch(job_id, connection=conn)
    if loss == "deleted":
        job.delete()
        why = f"job {job_id} no longer exists"
    else:
        del job.meta["webhook"]
        job.save_meta()
        why = f"job {job_id} has no webhook"
    work()
    assert receiver.hits == []
    found = state(conn, job_id)
    assert found["state"] == "gave_up"
    assert found["attempts"] == 1
    assert found["last_error"] == why
    assert found["last_status"] is None
    assert found["next_attempt_at"] is None
    assert outcomes(conn) == {"gave_up": 1}
    assert scheduled(conn) == []
    assert hooks_waiting(conn) == 0
    assert FinishedJobRegistry(HOOKS, connection=conn).get_job_ids() == [delivery_id(conn, job_id)]
    assert webhook_log(caplog) == [(logging.WARNING, f"webhook of job {job_id}: gave_up ({why})")]


def test_the_last_try_records_its_own_status(
    make_app: AppMaker, work: Worker, conn: redis.Redis
) -> None:
    """A delivery that gives up shows the status its last try got, not an earlier try's."""
    client = make_app(
        webhook_allow_private=True, webhook_backoff_seconds=1, webhook_max_attempts=2
    ).test_client()
    with Receiver(answers=[500, 503]) as receiver:
        job_id = submit(client, "echo", {}, webhook_url=receiver.url)
        work()
        assert state(conn, job_id)["last_status"] == 500
        move_due(conn)
        work()
        assert len(receiver.hits) == 2
    found = state(conn, job_id)
    assert (found["state"], found["last_status"], found["last_error"]) == (
        "gave_up",
        503,
        "HTTP 503: ok",
    )


def test_next_attempt_at_is_when_rqs_scheduler_finds_the_retry_due(
    hook_client: FlaskClient, work: Worker, conn: redis.Redis
) -> None:
    """A failed try's next_attempt_at lies after the try, at the whole second RQ's scheduler
    has the retry due (the failure is recorded a moment before RQ schedules it)."""
    with Receiver(then=500) as receiver:
        job_id = submit(hook_client, "echo", {}, webhook_url=receiver.url)
        before = time.time()
        work()
        assert len(receiver.hits) == 1
    found = state(conn, job_id)
    assert found["state"] == "retrying"
    next_at = datetime.fromisoformat(found["next_attempt_at"]).timestamp()
    registry = ScheduledJobRegistry(HOOKS, connection=conn)
    due = conn.zscore(registry.key, delivery_id(conn, job_id))
    assert due is not None
    assert next_at > before
    assert due - 1 <= next_at <= due


def answer_with(
    status: int, head: dict[str, str], body: bytes
) -> Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]:
    """Return a Scripted answer: `status`, the headers `head` (Content-Length: the body's, unless
    chunked), then `body` as it is."""
    if "Transfer-Encoding" not in head:
        head = {**head, "Content-Length": str(len(body))}

    def answer(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(status)
        for name, value in head.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


@pytest.mark.parametrize(
    ("head", "body", "error"),
    [
        ({}, b"  bad \xff byte\n\n\n", "HTTP 500: bad \ufffd byte"),
        ({}, b"", "HTTP 500"),
        # A chunked body whose first chunk size is no number: the body cannot be read.
        ({"Transfer-Encoding": "chunked"}, b"not-a-size\r\n\r\n", "HTTP 500"),
    ],
    ids=["invalid-utf-8", "empty", "unreadable"],
)
def test_a_failed_tries_error_quotes_the_answers_body(
    hook_client: FlaskClient,
    work: Worker,
    conn: redis.Redis,
    head: dict[str, str],
    body: bytes,
    error: str,
) -> None:
    """A non-2xx answer's error is its status and the start of its body, stripped, invalid
    UTF-8 shown as U+FFFD; only the status when the body is empty or cannot be read."""
    with Scripted(answer_with(500, head, body)) as server:
        job_id = submit(hook_client, "echo", {}, webhook_url=server.url)
        work()
        assert server.requests == [("POST", "/hook")]
    found = state(conn, job_id)
    assert (found["state"], found["last_status"], found["last_error"]) == ("retrying", 500, error)


def test_only_the_start_of_an_error_body_is_read(
    make_app: AppMaker, work: Worker, conn: redis.Redis
) -> None:
    """A try reads RESPONSE_CAP bytes of a non-2xx answer's body and no more: it fails with the
    receiver's status and words, never waiting for the rest of the body."""
    client = make_app(
        webhook_allow_private=True, webhook_timeout_seconds=1, webhook_max_attempts=1
    ).test_client()
    start = b"receiver busy: " + b"." * (webhooks.RESPONSE_CAP - 15)
    assert len(start) == webhooks.RESPONSE_CAP
    hung_up = threading.Event()

    def part(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
        # The rest of the announced body would come once the worker hung up: never, for a try
        # that reads it.
        handler.send_response(503)
        handler.send_header("Content-Length", str(2 * webhooks.RESPONSE_CAP))
        handler.end_headers()
        handler.wfile.write(start)
        handler.wfile.flush()
        handler.connection.settimeout(20)
        with contextlib.suppress(OSError):
            handler.connection.recv(1)
        hung_up.set()

    with Scripted(part) as server:
        job_id = submit(client, "echo", {}, webhook_url=server.url)
        work()
        wait_until(hung_up.is_set)
    found = state(conn, job_id)
    assert found["state"] == "gave_up"
    assert found["last_status"] == 503
    assert found["last_error"] == "HTTP 503: " + start.decode()[:200]


def test_a_deadline_firing_on_a_closed_socket_is_harmless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A try's deadline that goes off once its socket is closed (the try ended just as the timer
    fired) marks itself fired and raises nothing in its timer thread."""
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    closed = socket.socket()
    closed.close()
    deadline = webhooks._Deadline(0.3)
    deadline.sock = closed
    assert not deadline.fired, "the deadline went off before it held the socket"
    wait_until(lambda: deadline.fired, timeout=5, interval=0.01)
    deadline.timer.join(timeout=5)
    assert not deadline.timer.is_alive()
    assert errors == []


def webhook_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """Return the (level, message) of every line the webhook delivery logged."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == webhooks.__name__]


@pytest.mark.parametrize(
    ("answers", "attempts", "level", "line"),
    [
        ([200], 3, logging.INFO, "delivered"),
        ([410], 3, logging.WARNING, "gone (the receiver answered 410 Gone)"),
        ([500], 3, logging.WARNING, "try failed (HTTP 500: ok); next at {next_at}"),
        ([503], 1, logging.WARNING, "gave up (HTTP 503: ok)"),
    ],
    ids=["delivered", "gone", "retrying", "gave-up"],
)
def test_each_try_logs_one_line_naming_the_job(
    make_app: AppMaker,
    work: Worker,
    conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    answers: list[int | str],
    attempts: int,
    level: int,
    line: str,
) -> None:
    """Each try logs one line naming the job, its outcome and the error if any: INFO when
    delivered, WARNING otherwise (a retry says when the next try is)."""
    caplog.set_level(logging.INFO, logger=webhooks.__name__)
    client = make_app(
        webhook_allow_private=True, webhook_backoff_seconds=1, webhook_max_attempts=attempts
    ).test_client()
    with Receiver(answers=answers) as receiver:
        job_id = submit(client, "echo", {}, webhook_url=receiver.url)
        work()
        assert len(receiver.hits) == 1
    # The retry's line names the whole second its status shows as next_attempt_at.
    next_attempt_at = state(conn, job_id)["next_attempt_at"]
    next_at = datetime.fromisoformat(next_attempt_at).timestamp() if next_attempt_at else 0.0
    said = line.format(next_at=f"{next_at:.0f}")
    assert webhook_log(caplog) == [(level, f"webhook of job {job_id}: {said}")]
