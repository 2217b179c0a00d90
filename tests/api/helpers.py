"""Helpers for the API tests: the envelope check, requests with the key, Redis time."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import redis
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from shared import keys
from tests.support import AUTH

ENVELOPE_FIELDS = (
    "code",
    "id",
    "job_id",
    "response",
    "message",
    "run_time",
    "queue_time",
    "total_time",
    "pid",
    "queue_id",
    "queue_length",
    "build_number",
)
JOBS = "/v1/toolkit/jobs"
JOBS_STATUS = "/v1/toolkit/jobs/status"
JOB_STATUS = "/v1/toolkit/job/status"
AUTHENTICATE = "/v1/toolkit/authenticate"


def assert_envelope(resp: TestResponse, code: int, queue_id: str = "default") -> dict[str, Any]:
    """Assert `resp` is a JSON envelope with HTTP status `code`; return the parsed body."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == code, text
    assert resp.mimetype == "application/json", resp.content_type
    body = json.loads(text, parse_constant=_reject_constant)
    assert isinstance(body, dict), text
    missing = [field for field in ENVELOPE_FIELDS if field not in body]
    assert not missing, f"envelope lacks {missing}: {text}"
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    for field in ("run_time", "queue_time", "total_time"):
        value = body[field]
        assert isinstance(value, int | float) and not isinstance(value, bool), (field, value)
        assert math.isfinite(value) and value >= 0, (field, value)
    assert math.isclose(body["total_time"], body["run_time"] + body["queue_time"], abs_tol=2e-4), (
        body
    )
    # The test client runs the app in this very process.
    assert body["pid"] == os.getpid()
    assert body["queue_id"] == queue_id
    length = body["queue_length"]
    assert length is None or (isinstance(length, int) and length >= 0), length
    assert isinstance(body["build_number"], str) and body["build_number"]
    assert body["job_id"] is None or isinstance(body["job_id"], str)
    return body


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"the response is not strict JSON: it contains {name}")


def post(client: FlaskClient, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
    """POST `body` as JSON (no body when None) with the API key, unless headers are given."""
    kwargs.setdefault("headers", AUTH)
    if body is not None:
        kwargs["json"] = body
    return client.post(path, **kwargs)


def submit(client: FlaskClient, task: str = "echo", payload: Any = None, **fields: Any) -> str:
    """Submit `task` with `payload`, assert it is accepted, and return the job id."""
    body: dict[str, Any] = {"task": task, "payload": payload or {}, **fields}
    reply = assert_envelope(post(client, JOBS, body), 202)
    job_id: str = reply["job_id"]
    return job_id


def queue_length(conn: redis.Redis, queue: str = "default") -> int:
    """Return how many jobs wait in RQ's list for `queue`."""
    return int(conn.llen(keys.rq_queue_key(queue)))


def redis_now_us(conn: redis.Redis) -> int:
    """Return the Redis server clock in integer microseconds."""
    seconds, micros = conn.time()
    return int(seconds) * 1_000_000 + int(micros)
