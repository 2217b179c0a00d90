"""One log line per request, with a request id, and never the key."""

from __future__ import annotations

import logging
import os

import pytest
from flask.testing import FlaskClient

from api.access import RequestIds
from tests.helpers import API_KEY, JOBS_STATUS, post


def _request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "api.access"]


def test_each_request_logs_one_line_with_its_fields(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A request logs exactly one line carrying method, path, status, duration and request id."""
    with caplog.at_level(logging.INFO):
        resp = post(client, JOBS_STATUS, {})
    (record,) = _request_records(caplog)
    assert (record.method, record.path, record.status) == ("POST", JOBS_STATUS, 200)  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    assert record.request_id == resp.headers["X-Request-ID"]  # type: ignore[attr-defined]
    assert API_KEY not in record.getMessage()


def test_a_plain_caller_request_id_is_kept_and_a_hostile_one_replaced(
    client: FlaskClient,
) -> None:
    """X-Request-ID is echoed when plain, and replaced when long or odd."""
    kept = client.get("/health", headers={"X-Request-ID": "abc-123.x_y"})
    assert kept.headers["X-Request-ID"] == "abc-123.x_y"
    for hostile in ["a" * 65, "bad id", "<script>", "a/b"]:
        replaced = client.get("/health", headers={"X-Request-ID": hostile})
        assert replaced.headers["X-Request-ID"] != hostile
        assert len(replaced.headers["X-Request-ID"]) == 32


def test_a_metrics_failure_never_breaks_an_answer(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recording the request's metrics fails, the answer is unchanged and the error logged."""
    import api.access

    def broken(*args: object) -> None:
        raise FileNotFoundError("metrics directory gone")

    monkeypatch.setattr(api.access, "observe_request", broken)
    with caplog.at_level(logging.INFO):
        resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.get_json()["message"] == "healthy"
    errors = [r for r in _request_records(caplog) if r.exc_info]
    lines = [r for r in _request_records(caplog) if not r.exc_info]
    assert [r.getMessage() for r in errors] == ["could not record the request's metrics"]
    assert [r.status for r in lines] == [200]  # type: ignore[attr-defined]


def test_request_ids_made_here_are_unique_and_new_in_each_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ids the service makes are 32 hex digits, never repeat, and a forked process (a new
    pid) draws a prefix of its own."""
    ids = RequestIds()
    first = [ids.next() for _ in range(1000)]
    assert len(set(first)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    monkeypatch.setattr(os, "getpid", lambda: -7)
    forked = ids.next()
    assert forked[:16] != first[0][:16] and forked not in first


def test_an_answer_without_a_caller_id_gets_a_fresh_one(client: FlaskClient) -> None:
    """Each request without X-Request-ID is answered with an id of its own."""
    seen = {client.get("/health").headers["X-Request-ID"] for _ in range(5)}
    assert len(seen) == 5
