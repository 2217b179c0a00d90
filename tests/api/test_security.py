"""Security: the key never leaks, hostile job ids never reach Redis, webhooks only reach out.

Which routes need the key, and how it is checked: tests/api/test_auth.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import API_KEY, AUTH, JOBS, assert_envelope, post, queue_length


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


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/café",
        "http://bücher.example/",
        "http://93.184.216.34/hook?name=zoë",
        "http://93.184.216.34/a\u0001b",
        "http://93.184.216.34/a\u007fb",
        "http://93.184.216.34/a\u0000b",
        "http://93.184.216.34/a\u0080b",
    ],
    ids=["non-ascii-path", "idn-host", "non-ascii-query", "soh", "del", "nul", "c1-control"],
)
def test_webhook_urls_beyond_printable_ascii_are_refused(
    client: FlaskClient, conn: redis.Redis, url: str
) -> None:
    """A webhook_url with a non-ASCII or control character, which HTTP cannot send as it is, is
    a 400 that says to send printable ASCII; no job is queued."""
    body = assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 400)
    assert "webhook_url must be printable ASCII" in body["message"], body["message"]
    assert "punycode" in body["message"] and "%XX" in body["message"]
    assert queue_length(conn) == 0


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/caf%C3%A9", "http://93.184.216.34/hook?name=zo%C3%AB&x=%01"]
)
def test_percent_encoded_webhook_urls_are_accepted(client: FlaskClient, url: str) -> None:
    """A webhook_url with its non-ASCII characters percent-encoded is accepted (202)."""
    assert_envelope(post(client, JOBS, {"task": "echo", "webhook_url": url}), 202)
