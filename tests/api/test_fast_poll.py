"""The plain poll is answered before Flask's dispatch (api/fast_poll.py), with the answer, log
line and metrics the Flask path gives; everything else, failures included, is Flask's, with
nothing read, parsed or asked of Redis twice."""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis
from flask import Flask, request_started
from flask.testing import FlaskClient
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import JobStatus
from werkzeug.test import TestResponse

import api.body
import api.fast_poll
from api import request_metrics
from api.context import EXTENSION
from api.fast_poll import FastPoll
from shared.index import StatusIndex
from tests.helpers import (
    API_KEY,
    AUTH,
    JOBS_STATUS,
    assert_envelope,
    record,
    scrape,
    submit,
)

# Fields that differ between two answers of the same request: its timing, and the read's fence
# (which a page's cursor holds too).
TIMING_FIELDS = ("run_time", "total_time", "server_time", "next_cursor")


@pytest.fixture
def apps(make_app: Callable[..., Flask]) -> tuple[Flask, Flask]:
    """Return the app as built, and the same app with its fast poll taken off (Flask alone)."""
    fast = make_app()
    assert isinstance(fast.wsgi_app, FastPoll)
    plain = make_app()
    plain.wsgi_app = plain.wsgi_app.flask  # type: ignore[attr-defined, method-assign]
    return fast, plain


@pytest.fixture
def dispatched(apps: tuple[Flask, Flask]) -> Iterator[list[str]]:
    """Return the paths Flask's own dispatch began, for either app."""
    seen: list[str] = []

    def began(sender: Flask, **extra: Any) -> None:
        from flask import request

        seen.append(request.path)

    request_started.connect(began)
    yield seen
    request_started.disconnect(began)


@pytest.fixture
def jobs(index: StatusIndex) -> list[str]:
    """Put a few jobs in the index, of three statuses; return their ids."""
    ids = {"job-a": JobStatus.QUEUED, "job-b": JobStatus.FINISHED, "job-c": JobStatus.FAILED}
    for job_id, status in ids.items():
        record(index, job_id, status)
    return list(ids)


def send(app: Flask, data: bytes, headers: dict[str, str], **environ: Any) -> TestResponse:
    """POST `data` to jobs/status of `app` with `headers`."""
    return app.test_client().post(
        JOBS_STATUS, data=data, headers=headers, environ_overrides=environ
    )


def comparable(resp: TestResponse) -> tuple[int, dict[str, str], Any]:
    """Return what two answers to the same request share: status, headers, body."""
    headers = {k: v for k, v in resp.headers.items() if k not in ("X-Request-ID", "Content-Length")}
    try:
        body = json.loads(resp.get_data())
    except ValueError:
        return resp.status_code, headers, resp.get_data()
    for field in TIMING_FIELDS:
        if isinstance(body, dict) and body.get(field) is not None:
            body[field] = "<timing>"
    return resp.status_code, headers, body


BODIES: dict[str, bytes] = {
    "empty": b"",
    "empty object": b"{}",
    "since_seconds": b'{"since_seconds": 600}',
    "client id": b'{"since_seconds": 60.5, "id": "n8n-42"}',
    "id beyond 64 bits": b'{"id": 123456789012345678901234567890}',
    "id non-ASCII": '{"id": "héllo ✓"}'.encode(),
    "status filter": b'{"status": ["failed", "done"]}',
    "counts": b'{"counts": true, "id": {"nested": [1, 2]}}',
    "since a position": b'{"since": 1000000000.5}',
    "page": b'{"limit": 2, "counts": true}',
    "facet": b'{"queue": "default"}',
    "bad cursor": b'{"cursor": "bogus"}',
    "negative window": b'{"since_seconds": -1}',
    "unknown field": b'{"since_seconds": 60, "bogus": 1}',
    "not JSON": b'{"since_seconds": ',
    "not an object": b"[1, 2]",
    "not UTF-8": b'{"id": "\xff"}',
    "too deep": b"[" * 70 + b"]" * 70,
    "unknown status": b'{"status": ["nope"]}',
}


@pytest.mark.parametrize("data", BODIES.values(), ids=BODIES)
def test_every_body_gets_the_answer_flask_alone_gives(
    apps: tuple[Flask, Flask], jobs: list[str], data: bytes
) -> None:
    """Whatever the body, the app answers exactly what Flask alone answers (timing apart)."""
    fast, plain = apps
    headers = {**AUTH, "Content-Type": "application/json"}
    assert comparable(send(fast, data, headers)) == comparable(send(plain, data, headers))


HEADERS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "no key": ({}, {}),
    "wrong key": ({"x-api-key": API_KEY + "x"}, {}),
    "key as a Bearer token": ({"Authorization": f"Bearer {API_KEY}"}, {}),
    "body cut short": (AUTH, {"CONTENT_LENGTH": "100"}),
    "body over the limit": (AUTH, {"CONTENT_LENGTH": str(10**9)}),
    "under a mount point": (AUTH, {"SCRIPT_NAME": "/mounted"}),
}


@pytest.mark.parametrize(("headers", "environ"), HEADERS.values(), ids=HEADERS)
def test_every_refusal_is_the_answer_flask_alone_gives(
    apps: tuple[Flask, Flask],
    jobs: list[str],
    headers: dict[str, str],
    environ: dict[str, str],
) -> None:
    """A missing or wrong key, a cut or oversized body, a mount: Flask's own answer."""
    fast, plain = apps
    data = b'{"since_seconds": 600, "id": 7}'
    answer = send(fast, data, headers, **environ)
    assert answer.status_code != 200 or environ.get("SCRIPT_NAME")
    assert comparable(answer) == comparable(send(plain, data, headers, **environ))


def test_the_plain_poll_never_enters_flask_and_the_rest_does(
    apps: tuple[Flask, Flask], jobs: list[str], dispatched: list[str]
) -> None:
    """The plain poll is answered without Flask's dispatch; a page, a 400 or a GET go to it."""
    fast, _ = apps
    client = fast.test_client()
    body = assert_envelope(client.post(JOBS_STATUS, json={"since_seconds": 60}, headers=AUTH), 200)
    assert set(body["response"]) == set(jobs)
    assert dispatched == []
    assert_envelope(client.post(JOBS_STATUS, json={"limit": 1}, headers=AUTH), 200)
    assert_envelope(client.post(JOBS_STATUS, json={"since_seconds": "x"}, headers=AUTH), 400)
    assert_envelope(client.get(JOBS_STATUS, headers=AUTH), 200)
    assert dispatched == [JOBS_STATUS] * 3


def test_the_plain_poll_logs_and_counts_as_flask_does(
    apps: tuple[Flask, Flask],
    jobs: list[str],
    dispatched: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One log line with the fields Flask's path logs, and one sample in the same series."""
    fast, plain = apps
    request_metrics._children.clear()
    count = (
        "toolkit_jobs_request_duration_seconds_count",
        (("method", "POST"), ("route", JOBS_STATUS), ("status", "200")),
    )
    lines: dict[str, logging.LogRecord] = {}
    for name, app in (("fast", fast), ("plain", plain)):
        before = scrape(app.test_client()).get(count, 0.0)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="api.access"):
            resp = send(app, b"{}", {**AUTH, "X-Request-ID": f"mine-{name}"})
        assert_envelope(resp, 200)
        (lines[name],) = [r for r in caplog.records if r.name == "api.access"]
        # run_time is rounded to 0.1 ms, duration_ms to 0.01 ms.
        duration = lines[name].duration_ms / 1000  # type: ignore[attr-defined]
        assert 0 <= resp.get_json()["run_time"] <= duration + 0.0001
        assert resp.headers["X-Request-ID"] == f"mine-{name}"
        assert scrape(app.test_client()).get(count, 0.0) - before == 1
    assert dispatched.count(JOBS_STATUS) == 1  # the plain app's only
    fields = ("method", "path", "status", "request_id")
    got = {name: {f: getattr(line, f) for f in fields} for name, line in lines.items()}
    assert got["fast"] == {**got["plain"], "request_id": "mine-fast"}
    assert got["plain"]["request_id"] == "mine-plain"
    for line in lines.values():
        assert line.getMessage().startswith(f"POST {JOBS_STATUS} 200 ")
        assert line.getMessage().endswith(f" id={line.request_id}")  # type: ignore[attr-defined]
        assert line.duration_ms > 0  # type: ignore[attr-defined]


def test_a_handed_over_poll_keeps_its_request_id_and_its_start(
    apps: tuple[Flask, Flask], caplog: pytest.LogCaptureFixture
) -> None:
    """A poll handed to Flask answers and logs the id the fast poll gave it, and one line."""
    fast, _ = apps
    with caplog.at_level(logging.INFO, logger="api.access"):
        resp = send(fast, b'{"limit": 1}', AUTH)
    assert_envelope(resp, 200)
    (line,) = [r for r in caplog.records if r.name == "api.access"]
    assert line.request_id == resp.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert resp.get_json()["run_time"] <= line.duration_ms / 1000  # type: ignore[attr-defined]


def test_a_body_handed_over_is_read_and_parsed_once(
    apps: tuple[Flask, Flask], parses: list[bytes]
) -> None:
    """A poll's body refused (400) or paged is parsed once, by the fast poll, never by Flask."""
    fast, _ = apps
    for data in (b'{"id": 5, "since_seconds": "x"}', b'{"id": 5, "limit": 1}', b"{"):
        parses.clear()
        resp = send(fast, data, AUTH)
        assert resp.status_code in (200, 400)
        assert resp.get_json()["id"] == (None if data == b"{" else 5)
        assert parses == [data]


@pytest.fixture
def window_calls(apps: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the fast app's index window reads (its index is its own, apart from the plain's)."""
    fast, _ = apps
    index = fast.extensions[EXTENSION].index
    calls: list[int] = []
    real = index.window

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index, "window", counted)
    return calls


def test_a_redis_failure_is_answered_by_flasks_handler_after_one_read(
    apps: tuple[Flask, Flask], window_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails is not tried again: Flask's handler answers the 503 it would have."""
    fast, plain = apps
    for app in apps:
        index = app.extensions[EXTENSION].index

        def down(*args: Any, **kwargs: Any) -> Any:
            window_calls.append(1)
            raise RedisConnectionError("Error 111 connecting to redis:6379. Connection refused.")

        monkeypatch.setattr(index, "window", down)
    answers = [send(app, b'{"id": "x"}', AUTH) for app in (fast, plain)]
    body = assert_envelope(answers[0], 503)
    assert body["message"] == "Failed to retrieve job statuses: Redis unavailable"
    assert body["id"] == "x"
    assert answers[0].headers["Retry-After"] == answers[1].headers["Retry-After"]
    assert comparable(answers[0]) == comparable(answers[1])
    assert window_calls == [1, 1]  # one per app


def test_an_unexpected_error_is_a_json_500_after_one_read(
    apps: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of ours in the read is Flask's JSON 500, logged with its traceback."""
    fast, _ = apps
    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise RuntimeError("a bug")

    monkeypatch.setattr(fast.extensions[EXTENSION].index, "window", broken)
    body = assert_envelope(send(fast, b"{}", AUTH), 500)
    assert body["message"] == "Internal server error"
    assert calls == [1]


def test_an_error_building_the_answer_is_a_json_500_after_one_read(
    apps: tuple[Flask, Flask], window_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of ours after the read (encoding the answer) is Flask's JSON 500, not a page."""
    fast, _ = apps

    def broken(obj: Any) -> bytes:
        raise RuntimeError("a bug in the encoder")

    monkeypatch.setattr(api.fast_poll, "encode", broken)
    body = assert_envelope(send(fast, b'{"id": "e"}', AUTH), 500)
    assert body["message"] == "Internal server error"
    assert body["id"] == "e"
    assert window_calls == [1]


def test_a_window_too_large_for_one_read_is_streamed_from_that_read(
    apps: tuple[Flask, Flask],
    jobs: list[str],
    window_calls: list[int],
    monkeypatch: pytest.MonkeyPatch,
    dispatched: list[str],
) -> None:
    """A window past one read goes to Flask with the read done, streamed as Flask alone does."""
    fast, plain = apps
    record(fast.extensions[EXTENSION].index, "job-d", JobStatus.FINISHED)
    jobs = [*jobs, "job-d"]
    for app in apps:
        index = app.extensions[EXTENSION].index
        # Batches of 2 ids: the two done jobs fill one, so they stream after the first read,
        # which holds the whole of the other sets.
        monkeypatch.setattr(index, "window", functools.partial(index.window, batch=2))
    answers, streamed = [], []
    for app in (fast, plain):
        answers.append(send(app, b'{"id": 1}', AUTH))
        streamed.append(answers[-1].is_streamed)
        answers[-1].get_data()  # a stream is read within its own request's context
    assert streamed == [True, True]
    assert comparable(answers[0]) == comparable(answers[1])
    assert set(answers[0].get_json()["response"]) == set(jobs)
    assert window_calls == [1]
    assert dispatched == [JOBS_STATUS, JOBS_STATUS]


def test_a_poll_without_redis_answers_503_through_the_fast_app(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """With Redis unreachable, the app as built answers the envelope's 503, not a page."""
    app = make_app(redis_url="redis://127.0.0.1:1/0", redis_timeout=0.5)
    client: FlaskClient = app.test_client()
    body = assert_envelope(client.post(JOBS_STATUS, json={"id": 3}, headers=AUTH), 503)
    assert body["message"] == "Failed to retrieve job statuses: Redis unavailable"
    assert body["id"] == 3


HANDOVERS: dict[str, bytes] = {
    "body not JSON": b'{"id": ',
    "query refused": b'{"since_seconds": "soon"}',
    "a page": b'{"limit": 1}',
    "a facet": b'{"task": "echo"}',
}


@pytest.mark.parametrize("data", HANDOVERS.values(), ids=HANDOVERS)
def test_every_handover_answers_and_logs_the_callers_request_id(
    apps: tuple[Flask, Flask], caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """Whatever the fast poll hands over, the answer and its log line keep the caller's id."""
    fast, _ = apps
    with caplog.at_level(logging.INFO, logger="api.access"):
        resp = send(fast, data, {**AUTH, "X-Request-ID": "caller-7"})
    assert resp.status_code in (200, 400)
    assert resp.headers["X-Request-ID"] == "caller-7"
    (line,) = [r for r in caplog.records if r.name == "api.access"]
    assert line.request_id == "caller-7"  # type: ignore[attr-defined]


def test_a_plain_poll_without_a_request_id_gets_a_fresh_one_each_time(
    apps: tuple[Flask, Flask],
) -> None:
    """Polls that bring no X-Request-ID each get a new id of their own."""
    fast, _ = apps
    ids = [send(fast, b"{}", AUTH).headers["X-Request-ID"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(len(request_id) == 32 for request_id in ids)


@pytest.mark.parametrize("chunked", [False, True], ids=["fast poll", "Flask, chunked"])
def test_a_body_slower_than_body_timeout_is_a_408_on_either_path(
    make_app: Callable[..., Flask], chunked: bool
) -> None:
    """The body is read under BODY_TIMEOUT by the fast poll and by Flask alike: a JSON 408."""
    app = make_app(body_timeout=1)
    assert isinstance(app.wsgi_app, FastPoll)

    class Trickle(io.RawIOBase):
        """A body whose bytes come after longer than the timeout."""

        def read(self, size: int = -1) -> bytes:
            gevent.sleep(5)
            return b"{}"

    environ: dict[str, Any] = {"wsgi.input": Trickle()}
    if chunked:  # no length: the fast poll leaves it to Flask
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    started = time.monotonic()
    resp = app.test_client().post(JOBS_STATUS, data=b"{}", headers=AUTH, environ_overrides=environ)
    body = assert_envelope(resp, 408)
    assert body["message"] == "Request body not received within 1 seconds"
    assert time.monotonic() - started < 4


def test_a_page_and_its_cursor_through_the_fast_app(
    apps: tuple[Flask, Flask], jobs: list[str], client: FlaskClient
) -> None:
    """A page and the next one by its cursor: the queue's length, "success", every job once."""
    fast, _ = apps
    submit(client)  # one job waiting in the queue
    first = assert_envelope(send(fast, b'{"limit": 2}', AUTH), 200)
    assert first["message"] == "success"
    assert first["queue_length"] == 1
    cursor = json.dumps({"cursor": first["next_cursor"]}).encode()
    rest = assert_envelope(send(fast, cursor, AUTH), 200)
    assert rest["queue_length"] == 1
    listed = [*first["response"], *rest["response"]]
    assert sorted(listed) == sorted({*jobs, *listed}) and set(jobs) <= set(listed)
    assert len(listed) == len(set(listed))


def test_a_streamed_window_with_a_facet_lists_only_the_facets_jobs(
    apps: tuple[Flask, Flask], client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window past one read, filtered by task, streams only that task's jobs."""
    fast, _ = apps
    echoes = {submit(client, "echo") for _ in range(3)}
    sleeper = submit(client, "sleep", {"seconds": 0})
    index = fast.extensions[EXTENSION].index
    monkeypatch.setattr(index, "window", functools.partial(index.window, batch=2))
    resp = send(fast, b'{"task": "echo"}', AUTH)
    assert resp.is_streamed
    listed = set(assert_envelope(resp, 200)["response"])
    assert listed == echoes
    assert sleeper not in listed


def test_the_plain_poll_starts_its_answer_as_a_wsgi_server_needs(
    apps: tuple[Flask, Flask], jobs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Called as gunicorn calls it: "200 OK", the JSON type, the length, the id; and a logged
    duration within the call's own time."""
    fast, _ = apps
    data = b'{"since_seconds": 60}'
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": JOBS_STATUS,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(data)),
        "HTTP_X_API_KEY": API_KEY,
        "HTTP_X_REQUEST_ID": "wsgi-1",
        "wsgi.input": io.BytesIO(data),
        "wsgi.url_scheme": "http",
    }
    started: list[tuple[str, list[tuple[str, str]]]] = []
    before = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="api.access"):
        answer = b"".join(fast.wsgi_app(environ, lambda s, h, e=None: started.append((s, h))))
    elapsed_ms = (time.perf_counter() - before) * 1000
    assert started == [
        (
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(answer))),
                ("X-Request-ID", "wsgi-1"),
            ],
        )
    ]
    assert set(json.loads(answer)["response"]) == set(jobs)
    (line,) = [r for r in caplog.records if r.name == "api.access"]
    assert 0 < line.duration_ms <= elapsed_ms + 0.01  # type: ignore[attr-defined]


def _down(*args: Any, **kwargs: Any) -> Any:
    raise RedisConnectionError("Connection refused.")


def _broken(obj: Any) -> bytes:
    raise RuntimeError("a bug in the encoder")


LATE_HANDOVERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "Redis down": ("index", lambda index: _down),
    "window past one read": ("index", lambda index: functools.partial(index.window, batch=1)),
    "answer failed": ("encode", lambda index: _broken),
}


@pytest.mark.parametrize(("target", "make"), LATE_HANDOVERS.values(), ids=LATE_HANDOVERS)
def test_a_handover_after_the_read_keeps_the_callers_request_id(
    apps: tuple[Flask, Flask],
    jobs: list[str],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    make: Callable[[Any], Any],
) -> None:
    """A failed read, a window streamed, an answer that failed: the caller's id comes back."""
    fast, _ = apps
    index = fast.extensions[EXTENSION].index
    if target == "index":
        monkeypatch.setattr(index, "window", make(index))
    else:
        monkeypatch.setattr(api.fast_poll, "encode", make(index))
    resp = send(fast, b"{}", {**AUTH, "X-Request-ID": "caller-9"})
    resp.get_data()
    assert resp.status_code in (200, 500, 503)
    assert resp.headers["X-Request-ID"] == "caller-9"
