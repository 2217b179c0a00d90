"""Security: every /v1 route needs the key, the key never leaks, webhooks only reach out."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.api.helpers import JOBS, assert_envelope, post
from tests.support import API_KEY, AUTH

OPEN_ROUTES = {"/health"}
# Without DASHBOARD_PASSWORD these only ever answer 403 (tests/api/test_dashboard.py); with
# it, the dashboard is a separate app behind HTTP Basic, outside this URL map.
DASHBOARD_REFUSALS = {"/dashboard", "/dashboard/", "/dashboard/<path:rest>"}
# Outside /v1 but keyed like it (the key may also come as a Bearer token).
KEYED_ROUTES = {"/metrics"}


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


@pytest.mark.parametrize("key", [None, "", "wrong-key-0123456789", API_KEY[:-1], API_KEY + "x"])
def test_every_v1_route_refuses_a_missing_or_wrong_key(app: Flask, key: str | None) -> None:
    """Each /v1 and keyed route and method in the URL map answers 401 without the right key."""
    client = app.test_client()
    headers = {} if key is None else {"x-api-key": key}
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


def test_open_routes_answer_without_a_key(client: FlaskClient) -> None:
    """/health answers 200 with no key at all."""
    assert_envelope(client.get("/health"), 200)


def test_the_key_is_never_logged_nor_echoed(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither log lines nor response bodies ever contain the API key, right or wrong."""
    wrong = "not-the-key-but-close-" + API_KEY
    with caplog.at_level(logging.DEBUG):
        answers = [
            post(client, JOBS, {"task": "echo", "payload": {"k": 1}}),
            client.post(JOBS, json={"task": "echo"}, headers={"x-api-key": wrong}),
            client.post("/v1/nope", headers=AUTH),
            client.get("/v1/toolkit/authenticate", headers=AUTH),
        ]
    for resp in answers:
        text = resp.get_data(as_text=True)
        assert API_KEY not in text and wrong not in text
        assert all(API_KEY not in value for value in resp.headers.values())
    assert caplog.records, "expected request log lines"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert API_KEY not in logged and wrong not in logged


HOSTILE_WEBHOOKS = [
    "http://localhost/hook",
    "http://LOCALHOST:8080/hook",
    "http://127.0.0.1/hook",
    "http://127.0.0.2/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://017700000001/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[0:0:0:0:0:ffff:7f00:1]/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/hook",
    "http://100.64.0.1/hook",
    "https://user:pass@127.0.0.1/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[2002:7f00:1::1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[::7f00:1]/hook",
    "http://[::ffff:0:7f00:1]/hook",
    "http://[64:ff9b:1::7f00:1]/hook",
    "http://[fc00::1]/hook",
    "http://0/hook",
    "http://127.0.0.1./hook",
    "http://localhost./hook",
]


@pytest.mark.parametrize("url", HOSTILE_WEBHOOKS)
def test_webhooks_to_non_public_addresses_are_refused(client: FlaskClient, url: str) -> None:
    """A webhook host that is or resolves to a non-public address is a 400, in any spelling."""
    body = assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 400)
    # A trailing-dot name resolves only where a resolver answers; refused either way.
    assert "public address" in body["message"] or "does not resolve" in body["message"]


def test_a_host_that_does_not_resolve_is_refused(client: FlaskClient) -> None:
    """A webhook host that does not resolve (a reserved .invalid name) is a 400."""
    url = "https://hooks.example.invalid/x"
    body = assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 400)
    assert "resolve" in body["message"]


def test_a_public_address_is_accepted(client: FlaskClient) -> None:
    """A webhook at a public address literal (no DNS needed) is accepted."""
    url = "https://93.184.216.34/hook"
    assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 202)


def test_the_setting_allows_private_targets(make_app: Callable[..., Flask]) -> None:
    """With WEBHOOK_ALLOW_PRIVATE a loopback webhook is accepted."""
    client = make_app(webhook_allow_private=True).test_client()
    url = "http://127.0.0.1:9000/hook"
    assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 202)


HOSTILE_IDS = [
    "../etc/passwd",
    "a/b",
    "*",
    "rq:job:*",
    "job?",
    "[ab]",
    "x" * 129,
    "jöb",
    "a b",
    "id\n",
    "\x00",
    "{tag}",
    "a:b",
]


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
def test_hostile_job_ids_never_reach_redis(client: FlaskClient, conn: object, job_id: str) -> None:
    """A hostile job_id is a 400, and Redis sees no command naming it (checked with MONITOR)."""
    import redis

    assert isinstance(conn, redis.Redis)
    with conn.monitor() as monitor:
        assert_envelope(post(client, "/v1/toolkit/job/status", {"job_id": job_id}), 400)
        conn.set("tkj:test:fence", "1")  # a last command, so the monitor has something to end on
        seen = []
        for command in monitor.listen():
            seen.append(command["command"])
            if "tkj:test:fence" in command["command"]:
                break
    assert not [line for line in seen if job_id in line], seen


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34:0/hook", "http://93.184.216.34\\@127.0.0.1/hook"]
)
def test_webhook_urls_two_parsers_could_read_differently_are_refused(
    client: FlaskClient, url: str
) -> None:
    """Port 0 and backslashes (read as slashes by WHATWG parsers) are refused with 400."""
    body = assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 400)
    assert "webhook_url" in body["message"]


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
    assert_envelope(client.get("/v1/toolkit/authenticate", headers=AUTH), 200)
    assert_envelope(client.get("/v1/toolkit/authenticate", headers={"x-api-key": "nope"}), 401)
    assert [given for given, _ in calls] == [API_KEY.encode(), b"nope"]
