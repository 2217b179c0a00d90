"""The request body is read and parsed at most once per request, its failure included."""

from __future__ import annotations

import io
import logging

import pytest
from flask.testing import FlaskClient

import api.body
from tests.helpers import AUTH, JOBS_STATUS


def test_malformed_body_is_parsed_once(client: FlaskClient, parses: list[bytes]) -> None:
    """A body that is not JSON is parsed once: the 400's client id does not parse it again."""
    resp = client.post("/v1/toolkit/jobs", data=b'{"id": 7, "task": ', headers=AUTH)
    assert resp.status_code == 400
    assert "not valid JSON" in resp.get_json()["message"]
    assert resp.get_json()["id"] is None
    assert parses == [b'{"id": 7, "task": ']


def test_refused_job_request_parses_once_and_echoes_the_id(
    client: FlaskClient, parses: list[bytes]
) -> None:
    """A well-formed body refused later (unknown task) is parsed once, and its id is echoed."""
    resp = client.post("/v1/toolkit/jobs", json={"id": "mine", "task": "nope"}, headers=AUTH)
    assert resp.status_code == 400
    assert resp.get_json()["id"] == "mine"
    assert len(parses) == 1


def test_unauthorized_answer_parses_once(client: FlaskClient, parses: list[bytes]) -> None:
    """A 401 echoes the body's id, parsing the body once."""
    resp = client.post("/v1/toolkit/jobs/status", json={"id": 42})
    assert resp.status_code == 401
    assert resp.get_json()["id"] == 42
    assert len(parses) == 1


def test_oversized_chunked_body_is_read_once(
    client: FlaskClient, parses: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked body past the limit is a 413, and is not read a second time for the id."""
    reads: list[int] = []
    real = api.body._read_limited

    def counting() -> bytes:
        reads.append(1)
        return real()

    monkeypatch.setattr(api.body, "_read_limited", counting)
    limit = client.application.config["MAX_CONTENT_LENGTH"]
    # A stream with no Content-Length, as a chunked upload reaches the app.
    body = io.BytesIO(b'{"id": 1, "x": "' + b"a" * limit + b'"}')
    resp = client.post("/v1/toolkit/jobs", input_stream=body, headers=AUTH)
    assert resp.status_code == 413
    assert reads == [1]
    assert parses == []


def test_a_body_shorter_than_its_content_length_is_a_json_400(
    client: FlaskClient, parses: list[bytes]
) -> None:
    """A body that ends before its Content-Length (the client went away) is a JSON 400, never
    parsed as the part that came: `{"task": "echo"}` cut short queues nothing."""
    whole = b'{"task": "echo", "payload": {}}'
    resp = client.post(
        "/v1/toolkit/jobs",
        data=whole[:16],
        headers=AUTH,
        environ_overrides={"CONTENT_LENGTH": str(len(whole))},
    )
    assert resp.status_code == 400
    assert resp.is_json and resp.get_json()["message"] == "Bad Request"
    assert parses == []


def test_a_body_is_read_up_to_its_content_length_only(
    client: FlaskClient, parses: list[bytes]
) -> None:
    """Bytes past Content-Length (a next request on the connection) are never read as body."""
    resp = client.post(
        "/v1/toolkit/jobs/status",
        input_stream=io.BytesIO(b'{"since_seconds": 60}GET / HTTP/1.1\r\n\r\n'),
        headers=AUTH,
        environ_overrides={"CONTENT_LENGTH": "21"},
    )
    assert resp.status_code == 200
    assert parses == [b'{"since_seconds": 60}']


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_body_is_never_read_for_the_id_of_a_method_without_one(
    client: FlaskClient, parses: list[bytes], method: str
) -> None:
    """GET, HEAD and OPTIONS answers carry no client id: a body sent with them is not parsed."""
    resp = client.open(JOBS_STATUS, method=method, data=b'{"id": 9}', headers=AUTH)
    assert resp.status_code in (200, 405)
    if method != "HEAD":
        assert resp.get_json()["id"] is None
    assert parses == []


def test_a_body_without_a_readable_id_logs_why_at_debug(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused body's answer has no id, and the debug log says why, in words."""
    with caplog.at_level(logging.DEBUG, logger="api.body"):
        resp = client.post("/v1/toolkit/jobs", data=b'{"id": 7, "task": ', headers=AUTH)
    assert resp.get_json()["id"] is None
    messages = [r.getMessage() for r in caplog.records if r.name == "api.body"]
    assert any(
        m.startswith("no client id in the body: ") and "not valid JSON" in m for m in messages
    ), messages
