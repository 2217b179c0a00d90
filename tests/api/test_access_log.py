"""One log line per request, with a request id, and never the key."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient

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
