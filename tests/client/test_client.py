"""The Python client against a real API and worker: submit, status, wait, actions, errors,
retries on 429, and the change feed followed by cursor."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import httpx
import pytest

from tests.client.conftest import Service
from tests.helpers import (
    API_KEY,
    JOB_STATUS,
    RedisServer,
    free_port,
    plain_id,
    running,
    service_env,
    start_api,
)
from toolkit_jobs import (
    ApiError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    ProtocolError,
    QueueFullError,
    ServerError,
    Status,
    TransportError,
    UnauthorizedError,
    WaitTimeoutError,
)
from toolkit_jobs.client import api_error

pytestmark = pytest.mark.timeout(90)


def feed_start(toolkit: Client) -> float:
    """Return the server's time now: a `since` after which only what follows has changed."""
    return toolkit.changes(since_seconds=0, limit=1).server_time


@pytest.mark.e2e
def test_submit_then_wait_returns_done_with_the_result(toolkit: Client) -> None:
    """A submitted echo job is accepted as queued, and wait() returns it done with its result."""
    submitted = toolkit.submit("echo", {"hello": "world"})
    assert submitted.status is Status.QUEUED
    assert submitted.task == "echo"
    assert submitted.location is not None and submitted.job_id in submitted.location
    assert not submitted.replayed

    info = toolkit.wait(submitted.job_id, timeout=30)
    assert info.status is Status.DONE and info.ended
    assert info.result == {"hello": "world"}
    assert info.task == "echo"
    assert info.created_at is not None and info.ended_at is not None
    assert info.created_at <= info.ended_at
    assert toolkit.status(submitted.job_id).status is Status.DONE


@pytest.mark.e2e
def test_a_failing_job_is_returned_failed_not_raised(toolkit: Client) -> None:
    """wait() on a job whose task raises returns it failed, with the task's error message."""
    job_id = toolkit.submit("fail", {"message": "boom"}).job_id
    info = toolkit.wait(job_id, timeout=30)
    assert info.status is Status.FAILED
    assert info.error is not None and "boom" in info.error


@pytest.mark.e2e
def test_a_named_submission_twice_is_replayed(toolkit: Client) -> None:
    """The same idempotency key submitted twice answers with the same job, marked replayed."""
    first = toolkit.submit("echo", {"n": 1}, idempotency_key="client-replay-1")
    again = toolkit.submit("echo", {"n": 1}, idempotency_key="client-replay-1")
    assert again.job_id == first.job_id
    assert again.replayed and not first.replayed
    toolkit.wait(first.job_id, timeout=30)


@pytest.mark.e2e
def test_cancel_then_wait_returns_canceled_and_retry_queues_it_again(toolkit: Client) -> None:
    """A canceled job waits out as canceled; retry queues it again; cancel of an end is 409."""
    job_id = toolkit.submit("sleep", {"seconds": 60}).job_id
    assert toolkit.cancel(job_id).job_id == job_id
    assert toolkit.wait(job_id, timeout=30).status is Status.CANCELED
    with pytest.raises(ConflictError) as caught:
        toolkit.cancel(job_id)
    assert caught.value.status_code == 409
    assert "canceled" in caught.value.message

    assert toolkit.retry(job_id).status in (Status.QUEUED, Status.RUNNING)
    toolkit.cancel(job_id)
    assert toolkit.wait(job_id, timeout=30).status is Status.CANCELED


@pytest.mark.e2e
def test_wait_timeout_raises_with_the_last_status(toolkit: Client) -> None:
    """wait() on a job that outlasts the timeout raises WaitTimeoutError holding its last status."""
    job_id = toolkit.submit("sleep", {"seconds": 60}).job_id
    try:
        with pytest.raises(WaitTimeoutError) as caught:
            toolkit.wait(job_id, timeout=0.5)
        assert caught.value.last.job_id == job_id
        assert caught.value.last.status in (Status.QUEUED, Status.RUNNING)
        assert job_id in str(caught.value)
    finally:
        toolkit.cancel(job_id)


@pytest.mark.e2e
def test_a_wrong_key_raises_unauthorized_with_the_servers_message(service: Service) -> None:
    """A wrong API key raises UnauthorizedError (401) whose message is the server's."""
    with Client(service.url, "not-the-key") as wrong, pytest.raises(UnauthorizedError) as caught:
        wrong.status("anything")
    assert caught.value.status_code == 401
    assert caught.value.message == "Unauthorized"
    assert str(caught.value) == "Unauthorized (HTTP 401)"
    assert caught.value.body["code"] == 401


@pytest.mark.e2e
def test_an_unknown_task_raises_bad_request_with_the_servers_message(toolkit: Client) -> None:
    """Submitting a task not in the catalog raises BadRequestError (400) with the server's words."""
    with pytest.raises(BadRequestError) as caught:
        toolkit.submit("no-such-task")
    assert caught.value.status_code == 400
    assert caught.value.message == "unknown task 'no-such-task'"
    assert "unknown task 'no-such-task'" in str(caught.value)


@pytest.mark.e2e
def test_an_unknown_job_raises_not_found(toolkit: Client) -> None:
    """The status of a job that does not exist raises NotFoundError (404)."""
    with pytest.raises(NotFoundError) as caught:
        toolkit.status("no-such-job")
    assert caught.value.message == "Job not found"


@pytest.mark.e2e
def test_a_full_queue_is_retried_after_retry_after_then_raises(tmp_path: Path) -> None:
    """A 429 is retried after its Retry-After seconds, max_retries times, then QueueFullError."""
    server = RedisServer(tmp_path).start()
    env = service_env(server.url, MAX_QUEUE_LENGTH="1", RETRY_AFTER_SECONDS="7")
    port = free_port()
    slept: list[float] = []
    try:
        with (
            running(start_api(env, port, workers=1)),
            Client(
                f"http://127.0.0.1:{port}", API_KEY, max_retries=2, sleep=slept.append
            ) as toolkit,
        ):
            toolkit.submit("echo", {"fills": "the queue"})  # no worker: it stays queued
            with pytest.raises(QueueFullError) as caught:
                toolkit.submit("echo", {"n": 2})
    finally:
        server.stop()
    assert slept == [7.0, 7.0]
    assert caught.value.status_code == 429
    assert caught.value.message == "MAX_QUEUE_LENGTH (1) reached"
    assert caught.value.retry_after == 7.0


def test_connection_refused_is_a_clear_transport_error() -> None:
    """A URL nothing listens on raises TransportError naming the URL and the refusal."""
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, API_KEY, timeout=5) as toolkit, pytest.raises(TransportError) as caught:
        toolkit.submit("echo")
    assert url in str(caught.value)
    assert "connection refused" in str(caught.value)


@pytest.mark.e2e
def test_iter_changes_lists_each_job_exactly_once_across_pages(toolkit: Client) -> None:
    """Following cursors two jobs a page lists each ended job once, with its status, in order."""
    start = feed_start(toolkit)
    jobs = [toolkit.submit("echo", {"n": n}).job_id for n in range(5)]
    for job_id in jobs:
        toolkit.wait(job_id, timeout=30)

    pages = list(toolkit.pages(since=start, limit=2))
    assert len(pages) >= 3
    assert all(len(page.changes) <= 2 for page in pages)
    assert all(page.next_cursor is not None for page in pages[:-1])
    assert pages[-1].next_cursor is None

    listed = list(toolkit.iter_changes(since=start, limit=2))
    ids = [change.job_id for change in listed]
    assert len(ids) == len(set(ids)), ids
    assert {c.job_id: c.status for c in listed if c.job_id in jobs} == dict.fromkeys(
        jobs, Status.DONE
    )
    # Oldest change first: the echo jobs ended in the order one worker ran them.
    assert [job_id for job_id in ids if job_id in jobs] == jobs


@pytest.mark.e2e
def test_changes_filter_by_status_and_count(toolkit: Client) -> None:
    """A status filter lists only jobs of that status, and counts counts them per status."""
    start = feed_start(toolkit)
    failed = toolkit.submit("fail", {"message": "counted"}).job_id
    done = toolkit.submit("echo", {"counted": True}).job_id
    toolkit.wait(failed, timeout=30)
    toolkit.wait(done, timeout=30)

    page = toolkit.changes(since=start, status="failed", counts=True)
    assert page.changes == {failed: Status.FAILED}
    assert page.counts == {"failed": 1}
    assert page.next_cursor is None
    assert page.server_time > start

    both = toolkit.changes(since=start, status=[Status.DONE, "failed"])
    assert both.changes == {failed: Status.FAILED, done: Status.DONE}


@pytest.mark.e2e
def test_an_invalid_filter_is_a_bad_request(toolkit: Client) -> None:
    """A cursor the service never gave out raises BadRequestError with the server's message."""
    with pytest.raises(BadRequestError) as caught:
        toolkit.changes(cursor="not-a-cursor")
    assert "cursor" in caught.value.message


@pytest.mark.e2e
def test_follow_yields_old_changes_then_new_ones(service: Service) -> None:
    """follow() yields what changed since the start, then, polling, a job that ends later."""
    slept: list[float] = []
    with Client(service.url, service.api_key, sleep=slept.append) as toolkit:
        start = feed_start(toolkit)
        first = toolkit.submit("echo", {"first": True}).job_id
        toolkit.wait(first, timeout=30)
        # Only echo jobs: a sleep job an earlier test canceled may still be ending.
        changes = toolkit.follow(since=start, task="echo", interval=0.25)
        change = next(changes)
        assert (change.job_id, change.status) == (first, Status.DONE)
        assert change.server_time > start
        second = toolkit.submit("echo", {"second": True}).job_id
        toolkit.wait(second, timeout=30)
        later = list(itertools.islice(changes, 1))
        changes.close()
    assert [(c.job_id, c.status) for c in later] == [(second, Status.DONE)]
    assert slept and set(slept) == {0.25}


@pytest.mark.e2e
def test_a_refusal_that_is_not_json_still_raises_a_clear_error(service: Service) -> None:
    """gunicorn's own HTML refusal (a header over its limit) raises ApiError with its text."""
    with Client(service.url, "k" * 10_000) as toolkit, pytest.raises(ApiError) as caught:
        toolkit.status("any-job")
    assert caught.value.status_code == 431
    assert isinstance(caught.value.body, str)
    assert caught.value.message.startswith("Request Header Fields Too Large: ")
    assert "<" not in caught.value.message
    assert str(caught.value).endswith("(HTTP 431)")


def test_a_silent_server_is_a_timeout_transport_error() -> None:
    """A server that takes the connection and never answers raises TransportError after the
    timeout, saying so."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, API_KEY, timeout=0.3) as toolkit, pytest.raises(TransportError) as caught:
            toolkit.status("any-job")
    assert str(caught.value) == f"no answer from {url} within 0.3 s ({JOB_STATUS})"


def answer(status: int, body: bytes, **headers: str) -> httpx.Response:
    """Return an HTTP answer as httpx hands it over."""
    request = httpx.Request("POST", "http://service/v1/toolkit/jobs")
    return httpx.Response(status, content=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (429, {"Retry-After": "7"}, QueueFullError, 7.0),
        (429, {}, QueueFullError, 1.0),
        (429, {"Retry-After": "3600"}, QueueFullError, 60.0),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, QueueFullError, 0.0),
        (503, {"Retry-After": "5"}, ServerError, 5.0),
        (503, {}, ServerError, None),
        (500, {"Retry-After": "5"}, ServerError, None),
        (400, {}, BadRequestError, None),
    ],
)
def test_error_answers_map_to_exceptions_and_pauses(
    status: int, headers: dict[str, str], kind: type[ApiError], retry_after: float | None
) -> None:
    """Each error status gets its exception and the server's message; only 429, and 503 with
    Retry-After, carry a pause (capped at 60 s; a date in the past is no pause)."""
    body = json.dumps({"code": status, "message": "the server's words"}).encode()
    error = api_error(answer(status, body, **headers))
    assert type(error) is kind
    assert error.message == "the server's words"
    assert error.retry_after == retry_after


def test_an_error_page_not_json_gives_its_status_and_text() -> None:
    """A proxy's HTML 502 raises ServerError whose message gives the reason and the text."""
    error = api_error(answer(502, b"<html><body>upstream\n  down</body></html>"))
    assert isinstance(error, ServerError)
    assert str(error) == "Bad Gateway: upstream down (HTTP 502)"


@pytest.mark.parametrize(
    ("named", "sent"), [({}, 1), ({"job_id": "mine"}, 3), ({"idempotency_key": "k-1"}, 3)]
)
def test_only_a_named_submission_is_sent_again_after_a_503(
    named: dict[str, str], sent: int
) -> None:
    """A 503 may follow an enqueue that went through: an unnamed submission is not sent again
    (it could run twice), a named one is (it never runs twice)."""
    requests: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = json.dumps({"code": 503, "message": "Failed to submit the job: Redis unavailable"})
        return httpx.Response(503, content=body.encode(), headers={"Retry-After": "1"})

    pauses: list[float] = []
    transport = httpx.MockTransport(unavailable)
    with (
        Client(
            "http://service", API_KEY, max_retries=2, transport=transport, sleep=pauses.append
        ) as toolkit,
        pytest.raises(ServerError),
    ):
        toolkit.submit("echo", {}, **named)
    assert len(requests) == sent
    assert pauses == [1.0] * (sent - 1)


@pytest.mark.parametrize(
    "path", [JOB_STATUS, "/v1/toolkit/job/cancel", "/v1/toolkit/job/retry"], ids=plain_id
)
def test_a_503_to_a_job_action_is_not_sent_again(path: str) -> None:
    """A cancel, retry or status answered 503 raises at once for an action (it may have gone
    through); only the status read, which changes nothing, is asked again."""
    requests: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = json.dumps({"code": 503, "message": "Failed: Redis unavailable"})
        return httpx.Response(503, content=body.encode(), headers={"Retry-After": "1"})

    transport = httpx.MockTransport(unavailable)
    with (
        Client(
            "http://service", API_KEY, max_retries=2, transport=transport, sleep=lambda _: None
        ) as toolkit,
        pytest.raises(ServerError),
    ):
        {
            JOB_STATUS: toolkit.status,
            "/v1/toolkit/job/cancel": toolkit.cancel,
            "/v1/toolkit/job/retry": toolkit.retry,
        }[path]("job-1")
    assert len(requests) == (3 if path == JOB_STATUS else 1)


@pytest.mark.parametrize(
    "response",
    [
        {"job_id": "a", "job_status": "exploded"},
        {"job_status": "done"},
        "not an object",
    ],
    ids=["unknown-status", "no-job-id", "not-an-object"],
)
def test_an_answer_that_is_no_job_description_is_a_protocol_error(response: object) -> None:
    """A 200 whose `response` is not a job description raises ProtocolError, not a KeyError
    or ValueError."""

    def odd(request: httpx.Request) -> httpx.Response:
        body = json.dumps({"code": 200, "message": "success", "response": response})
        return httpx.Response(200, content=body.encode())

    with (
        Client("http://service", API_KEY, transport=httpx.MockTransport(odd)) as toolkit,
        pytest.raises(ProtocolError),
    ):
        toolkit.status("a")


def test_following_rides_out_an_outage_from_where_it_was() -> None:
    """A followed page that cannot be read (a 503, then no answer) is asked for again, with
    the same `since`, after the interval; the caller is told of each failure."""
    sent: list[dict[str, object]] = []
    answers = iter(["page", "503", "down", "page"])

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        kind = next(answers)
        if kind == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if kind == "503":
            body = {"code": 503, "message": "Failed to retrieve job statuses: Redis unavailable"}
            return httpx.Response(503, content=json.dumps(body).encode())
        page = {"code": 200, "response": {"j1": "done"}, "server_time": 100.5 + len(sent)}
        return httpx.Response(200, content=json.dumps({**page, "next_cursor": None}).encode())

    told: list[str] = []
    pauses: list[float] = []
    transport = httpx.MockTransport(service)
    with Client(
        "http://service", API_KEY, max_retries=0, transport=transport, sleep=pauses.append
    ) as toolkit:
        pages = toolkit.pages(
            since=1.0, follow=True, interval=3, on_error=lambda e: told.append(str(e))
        )
        first, second = next(pages), next(pages)
        pages.close()
    assert (first.server_time, second.server_time) == (101.5, 104.5)
    assert [body.get("since") for body in sent] == [1.0, 101.5, 101.5, 101.5]
    assert pauses == [3, 3, 3]
    assert len(told) == 2
    assert "Redis unavailable" in told[0]
    assert "cannot reach http://service" in told[1]
