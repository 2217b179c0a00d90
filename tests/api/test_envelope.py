"""The response envelope: the pure builder, and its fields on every endpoint's answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from shared.envelope import envelope
from tests.helpers import (
    AUTH,
    AUTHENTICATE,
    ENVELOPE_FIELDS,
    JOB_STATUS,
    JOBS,
    JOBS_STATUS,
    assert_envelope,
    post,
    queue_length,
    submit,
)

BASE: dict[str, Any] = {
    "code": 200,
    "message": "success",
    "run_time": 0.5,
    "pid": 42,
    "queue_id": "default",
    "queue_length": 3,
    "build_number": "1.2.3",
}


def test_builder_fields_in_order_with_defaults() -> None:
    """envelope() returns every standard field, in order, with null id/job_id/response."""
    body = envelope(**BASE)
    assert tuple(body) == ENVELOPE_FIELDS
    assert body == {
        "code": 200,
        "id": None,
        "job_id": None,
        "response": None,
        "message": "success",
        "run_time": 0.5,
        "queue_time": 0.0,
        "total_time": 0.5,
        "pid": 42,
        "queue_id": "default",
        "queue_length": 3,
        "build_number": "1.2.3",
    }


def test_builder_rounds_times_and_sums_total() -> None:
    """Times are rounded to 4 places and total_time is queue_time + run_time."""
    body = envelope(**{**BASE, "run_time": 0.123456789, "queue_time": 1.000049})
    assert body["run_time"] == 0.1235
    assert body["queue_time"] == 1.0
    assert body["total_time"] == 1.1235


def test_builder_passes_values_and_appends_extras() -> None:
    """Given values are kept as they are; extra fields follow the standard ones."""
    body = envelope(
        **{**BASE, "code": 429, "queue_length": None},
        id={"n": 1},
        job_id="j-1",
        response=[1, 2],
        max_queue_length=5,
    )
    assert list(body)[-1] == "max_queue_length"
    assert list(body)[: len(ENVELOPE_FIELDS)] == list(ENVELOPE_FIELDS)
    assert body["max_queue_length"] == 5
    assert (body["code"], body["id"], body["job_id"], body["response"]) == (
        429,
        {"n": 1},
        "j-1",
        [1, 2],
    )
    assert body["queue_length"] is None


@pytest.mark.parametrize("client_id", ["req-1", 7, 1.5, {"a": [1]}, ["x"], True, "", None])
@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (JOBS_STATUS, {}, 200),
        (JOBS_STATUS, {"since_seconds": "x"}, 400),
        (JOB_STATUS, {"job_id": "missing"}, 404),
        (JOB_STATUS, {}, 400),
        (JOBS, {"task": "echo"}, 202),
        (JOBS, {"task": "nope"}, 400),
    ],
)
def test_id_is_echoed(
    client: FlaskClient, client_id: Any, path: str, body: dict[str, Any], code: int
) -> None:
    """The body's `id`, whatever its JSON type, comes back as `id`, in success and error."""
    reply = assert_envelope(post(client, path, {**body, "id": client_id}), code)
    assert reply["id"] == client_id


@pytest.mark.parametrize(("path", "code"), [(JOBS_STATUS, 200), (JOB_STATUS, 400), (JOBS, 400)])
def test_id_is_null_without_one(client: FlaskClient, path: str, code: int) -> None:
    """Without an `id` in an object body, or with no object body at all, `id` is null."""
    assert assert_envelope(post(client, path, {"since_seconds": 1}), code)["id"] is None
    resp = post(client, path, data=b'[{"id": "in-array"}]', content_type="application/json")
    assert assert_envelope(resp, 400)["id"] is None


def test_get_endpoints_have_null_id(client: FlaskClient) -> None:
    """GET requests carry no body, so their `id` is null."""
    for path in ("/health", AUTHENTICATE, "/nope"):
        resp = client.get(path, headers=AUTH, data=b'{"id": "ignored"}')
        assert assert_envelope(resp, resp.status_code)["id"] is None


def test_job_id_is_set_on_job_answers(client: FlaskClient) -> None:
    """`job_id` names the job on submit and status answers, and is null on the bulk query."""
    job_id = submit(client)
    assert assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}), 200)["job_id"] == job_id
    assert assert_envelope(post(client, JOBS_STATUS), 200)["job_id"] is None


def test_queue_id_and_build_number_come_from_settings(
    make_app: Callable[..., Flask], conn: redis.Redis
) -> None:
    """queue_id is the configured queue name and build_number the configured build."""
    client = make_app(queue_name="videos", build_number="2024.07-b9").test_client()
    job_id = submit_on(client)
    for resp in (
        post(client, JOBS_STATUS),
        post(client, JOB_STATUS, {"job_id": job_id}),
        client.get(AUTHENTICATE, headers=AUTH),
        client.get("/health"),
        client.get("/nope"),
    ):
        body = assert_envelope(resp, resp.status_code, queue_id="videos")
        assert body["build_number"] == "2024.07-b9"
    assert queue_length(conn, "videos") == 1


def submit_on(client: FlaskClient) -> str:
    """Submit an echo job to an app on a non-default queue; return its id."""
    body = assert_envelope(post(client, JOBS, {"task": "echo"}), 202, queue_id="videos")
    job_id: str = body["job_id"]
    return job_id
