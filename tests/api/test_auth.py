"""The API key: which routes need it, how it may be sent, how it is compared, and the 401."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.auth import bearer_token
from tests.helpers import (
    API_KEY,
    AUTH,
    AUTHENTICATE,
    JOB_STATUS,
    JOBS,
    JOBS_STATUS,
    METRICS,
    assert_envelope,
    post,
    queue_length,
    scrape,
    submit,
)

OPEN_ROUTES = {"/health", "/openapi.json", "/docs/", "/docs/<path:path>"}
# Without DASHBOARD_PASSWORD these only ever answer 403 (tests/api/test_dashboard.py); with
# it, the dashboard is a separate app behind HTTP Basic, outside this URL map.
DASHBOARD_REFUSALS = {"/dashboard", "/dashboard/", "/dashboard/<path:rest>"}
# Outside /v1 but keyed like it (the key may also come as a Bearer token).
KEYED_ROUTES = {"/metrics"}

# Headers that carry no right key, whatever the route. (A Bearer token opens /metrics only:
# see test_the_bearer_form_opens_no_v1_route.)
WRONG_KEYS: dict[str, dict[str, str]] = {
    "missing": {},
    "empty": {"x-api-key": ""},
    "wrong": {"x-api-key": "wrong-key-0123456789"},
    "last-char": {"x-api-key": API_KEY[:-1] + chr(ord(API_KEY[-1]) + 1)},
    "prefix": {"x-api-key": API_KEY[:-1]},
    "longer": {"x-api-key": API_KEY + "x"},
    "upper": {"x-api-key": API_KEY.upper()},
    "non-ascii": {"x-api-key": "tëst-key"},
    "other-header": {"authorization": API_KEY},
}


def _routes(app: Flask) -> list[tuple[str, str]]:
    return sorted(
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    )


def test_the_url_map_holds_only_known_open_routes(app: Flask) -> None:
    """Every route outside /v1 is in the short lists of open routes and keyed routes."""
    outside = {rule for rule, _ in _routes(app) if not rule.startswith("/v1/")}
    assert outside == OPEN_ROUTES | KEYED_ROUTES | DASHBOARD_REFUSALS
    client = app.test_client()
    for rule, method in _routes(app):
        if rule in DASHBOARD_REFUSALS:
            path = rule.replace("<path:rest>", "0/data/queues.json")
            assert_envelope(client.open(path, method=method), 403)


@pytest.mark.parametrize("headers", WRONG_KEYS.values(), ids=WRONG_KEYS)
def test_every_keyed_route_refuses_a_missing_or_wrong_key(
    app: Flask, headers: dict[str, str]
) -> None:
    """Each /v1 and keyed route and method answers 401 "Unauthorized", no response, no length."""
    client = app.test_client()
    routes = [
        (rule, method)
        for rule, method in _routes(app)
        if rule.startswith("/v1/") or rule in KEYED_ROUTES
    ]
    assert routes, "no /v1 routes found"
    for rule, method in routes:
        resp = client.open(rule, method=method, headers=headers, json={})
        body = assert_envelope(resp, 401)
        assert body["message"] == "Unauthorized", (rule, method)
        assert body["response"] is None, (rule, method)
        # An unauthenticated caller does not learn the queue length.
        assert body["queue_length"] is None, (rule, method)


def test_the_bearer_form_opens_no_v1_route(app: Flask) -> None:
    """The right key as "Authorization: Bearer" is refused with 401 on every /v1 route."""
    client = app.test_client()
    routes = [(rule, method) for rule, method in _routes(app) if rule.startswith("/v1/")]
    assert routes, "no /v1 routes found"
    for rule, method in routes:
        headers = {"authorization": f"Bearer {API_KEY}"}
        body = assert_envelope(client.open(rule, method=method, headers=headers, json={}), 401)
        assert body["message"] == "Unauthorized", (rule, method)


def test_right_key_is_authorized(client: FlaskClient) -> None:
    """The configured key is answered 200 "Authorized"."""
    body = assert_envelope(client.get(AUTHENTICATE, headers=AUTH), 200)
    assert body["response"] == "Authorized"
    assert body["message"] == "success"
    assert body["queue_length"] == 0


def test_header_name_is_case_insensitive(client: FlaskClient) -> None:
    """The key is found under any capitalisation of the header name."""
    body = assert_envelope(client.get(AUTHENTICATE, headers={"X-API-KEY": API_KEY}), 200)
    assert body["response"] == "Authorized"


def test_authenticate_needs_no_redis(down_client: FlaskClient) -> None:
    """Checking the key works while Redis is down; the queue length is then unknown."""
    body = assert_envelope(down_client.get(AUTHENTICATE, headers=AUTH), 200)
    assert body["response"] == "Authorized"
    assert body["queue_length"] is None


def test_the_key_is_compared_in_constant_time(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key check goes through hmac.compare_digest, for right and wrong keys alike."""
    import api.auth

    calls: list[tuple[bytes, bytes]] = []
    real = api.auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.auth.hmac, "compare_digest", spy)
    assert_envelope(client.get(AUTHENTICATE, headers=AUTH), 200)
    assert_envelope(client.get(AUTHENTICATE, headers={"x-api-key": "nope"}), 401)
    assert [given for given, _ in calls] == [API_KEY.encode(), b"nope"]


def test_the_key_is_checked_before_the_body(client: FlaskClient) -> None:
    """An unauthenticated caller learns nothing about its body's validity: 401, not 400."""
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": "x"}, headers={}), 401)
    assert body["message"] == "Unauthorized"


def test_id_is_echoed_on_401(client: FlaskClient) -> None:
    """Even a refused caller gets its own `id` back."""
    reply = assert_envelope(post(client, JOBS_STATUS, {"id": "who"}, headers={}), 401)
    assert reply["id"] == "who"


def test_a_submission_without_the_key_enqueues_nothing(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Without the key nothing is enqueued: 401."""
    body = assert_envelope(post(client, JOBS, {"task": "echo"}, headers={}), 401)
    assert body["message"] == "Unauthorized"
    assert body["queue_length"] is None
    assert queue_length(conn) == 0


def test_a_job_is_not_described_without_the_key(client: FlaskClient) -> None:
    """Without the key an existing job is not described: 401."""
    job_id = submit(client)
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}, headers={}), 401)
    assert body["message"] == "Unauthorized"
    assert body["response"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": API_KEY},
        {"Authorization": f"Bearer {API_KEY}"},
        {"Authorization": f"bearer  {API_KEY} "},
        {"x-api-key": "wrong-key-0123456789", "Authorization": f"Bearer {API_KEY}"},
    ],
)
def test_metrics_answer_with_the_key_in_either_header(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    """The key in x-api-key or as a Bearer token (any case of "Bearer") gets the metrics."""
    assert scrape(client, headers)[("toolkit_jobs_redis_up", ())] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Bearer "},
    ],
)
def test_metrics_refuse_a_wrong_authorization_header(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    """A wrong Bearer token, or the key in another scheme, is a 401 envelope on /metrics."""
    body = assert_envelope(client.get(METRICS, headers=headers), 401)
    assert body["message"] == "Unauthorized"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc  ", "abc"),
        ("  Bearer abc def", "abc def"),
        ("Basic abc", ""),
        ("Bearerabc", ""),
        ("abc", ""),
        ("", ""),
    ],
)
def test_bearer_token_is_read_only_from_the_bearer_scheme(header: str, token: str) -> None:
    """bearer_token returns the stripped token after "Bearer " (any case), else ""."""
    assert bearer_token(header) == token


@pytest.mark.parametrize("key", ["XXXX", "k"])
def test_absent_headers_never_match_any_key(make_app: Callable[..., Flask], key: str) -> None:
    """With neither x-api-key nor Authorization sent, /metrics is 401 whatever the key is."""
    client = make_app(api_key=key).test_client()
    assert client.get(METRICS).status_code == 401
    assert client.get(METRICS, headers={"x-api-key": key}).status_code == 200
