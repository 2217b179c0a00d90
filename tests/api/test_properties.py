"""Property-based: whatever arrives (shape, type, encoding, method, path), the answer is a
JSON envelope and never a 5xx."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import API_KEY

ENDPOINTS = ["/v1/toolkit/jobs/status", "/v1/toolkit/job/status", "/v1/toolkit/jobs"]
OTHER_PATHS = [
    "/",
    "/health",
    "/v1",
    "/v1/toolkit",
    "/v1/toolkit/authenticate",
    "/v1/toolkit/jobs/",
    "/v1/toolkit/job/status/x",
    "/dashboard",
    "/metrics",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]
CONTENT_TYPES = [
    None,
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "*/*",
]
FIELDS = ["since_seconds", "job_id", "task", "payload", "id", "webhook_url"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["echo", "sleep", "fail", "os.system", "__import__", "../x", "*", "[a]"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
bodies = (
    json_values.map(lambda value: json.dumps(value).encode())
    | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5).map(
        lambda value: json.dumps(value).encode()
    )
    | st.binary(max_size=200)
    | st.just(b"[" * 5000)
    | st.just(b'{"since_seconds": 1e999}')
    | st.just(b'{"since_seconds": ' + b"9" * 5000 + b"}")
    | st.just(b"\xff\xfe{}")
)
RELAXED = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_json_envelope(resp: Any) -> None:
    """Assert the answer is a JSON envelope whose code is the status, and not a 5xx."""
    assert resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json", (resp.status_code, resp.content_type)
    body = json.loads(resp.get_data())
    assert isinstance(body, dict)
    assert body["code"] == resp.status_code
    assert isinstance(body["message"], str) and body["message"]


@RELAXED
@given(
    path=st.sampled_from(ENDPOINTS),
    body=bodies,
    content_type=st.sampled_from(CONTENT_TYPES),
    keyed=st.booleans(),
)
def test_any_body_on_any_endpoint_gets_an_envelope(
    client: FlaskClient, path: str, body: bytes, content_type: str | None, keyed: bool
) -> None:
    """Random JSON of any shape, wrong types, huge numbers and raw bytes: a 4xx/2xx envelope."""
    headers = {"x-api-key": API_KEY} if keyed else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert_json_envelope(client.post(path, data=body, headers=headers))


@RELAXED
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(ENDPOINTS + OTHER_PATHS)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30).map(
        # "/p/" keeps Werkzeug's test client from reading a leading "//x" as a host name.
        lambda text: "/p/" + text
    ),
)
def test_any_method_on_any_path_gets_an_envelope(
    client: FlaskClient, method: str, path: str
) -> None:
    """Unknown methods and paths, in any characters, answer a JSON envelope, never a 5xx."""
    resp = client.open(path, method=method, headers={"x-api-key": API_KEY})
    if (method, path) == ("GET", "/metrics"):
        # The one success that is no envelope: Prometheus text (tests/api/test_metrics.py).
        assert resp.status_code == 200
        return
    assert_json_envelope(resp)


@settings(RELAXED, max_examples=10)
@given(size=st.integers(min_value=1024 * 1024 + 1, max_value=1024 * 1024 + 4096))
def test_oversized_bodies_get_a_413_envelope(client: FlaskClient, size: int) -> None:
    """Any body past the limit is a 413 envelope."""
    resp = client.post(ENDPOINTS[2], data=b" " * size, headers={"x-api-key": API_KEY})
    assert resp.status_code == 413
    assert_json_envelope(resp)
