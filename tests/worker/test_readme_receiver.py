"""The README's webhook receiver, run as written, against deliveries the worker really signs."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from shared.delivery import read_state
from tests.helpers import ROOT, WEBHOOK_SECRET, Hit, Receiver, submit
from worker.main import TrackingMixin
from worker.webhooks import signed_headers

README = ROOT / "README.md"
SECTION = "## Webhooks"
# Another valid secret (whsec_ + base64 of 32 bytes): what a receiver must not accept.
OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
SIGNED = ("webhook-id", "webhook-timestamp", "webhook-signature")


def receiver_code() -> str:
    """Return the first python block of the README's Webhooks section, as written."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block in {SECTION}"
    return match.group(1)


@pytest.fixture
def receiver_app(monkeypatch: pytest.MonkeyPatch) -> Flask:
    """Return the Flask app the README's code builds, its WEBHOOK_SECRET the tests' secret."""
    monkeypatch.setenv("WEBHOOK_SECRET", WEBHOOK_SECRET)
    namespace: dict[str, Any] = {"__name__": "readme_receiver"}
    exec(compile(receiver_code(), str(README), "exec"), namespace)
    apps = [value for value in namespace.values() if isinstance(value, Flask)]
    assert len(apps) == 1, f"the README's receiver builds {len(apps)} Flask apps"
    return apps[0]


def receiver_path(app: Flask) -> str:
    """Return the one path the README's receiver takes POSTs on."""
    rules = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and "POST" in (rule.methods or set())
    ]
    assert len(rules) == 1, rules
    return rules[0]


@pytest.fixture
def served(receiver_app: Flask) -> Iterator[str]:
    """Serve the README's receiver over HTTP on loopback; return its webhook URL."""
    server = make_server("127.0.0.1", 0, receiver_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}{receiver_path(receiver_app)}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_readme_receiver_accepts_real_deliveries_of_each_end(
    make_app: Callable[..., Flask],
    run_worker: Callable[..., TrackingMixin],
    conn: redis.Redis,
    served: str,
) -> None:
    """Real deliveries of a done and a failed job, sent to the README's receiver, get a 2xx."""
    client = make_app(webhook_allow_private=True).test_client()
    done = submit(client, "echo", {"hello": "world"}, webhook_url=served)
    failed = submit(client, "fail", {"message": "the disk is full"}, webhook_url=served)

    run_worker(webhook_allow_private=True)

    for job_id in (done, failed):
        state = read_state(conn, job_id)
        assert state is not None
        assert state["state"] == "delivered", state
        assert 200 <= state["last_status"] < 300, state
        assert state["attempts"] == 1, state


@pytest.fixture
def delivery(
    make_app: Callable[..., Flask], run_worker: Callable[..., TrackingMixin]
) -> Iterator[Hit]:
    """Return one real delivery (body and headers) the worker made to a loopback receiver."""
    with Receiver() as receiver:
        client = make_app(webhook_allow_private=True).test_client()
        submit(client, "echo", {"hello": "world"}, webhook_url=receiver.url)
        run_worker(webhook_allow_private=True)
        assert len(receiver.hits) == 1, receiver.hits
        yield receiver.hits[0]


def post_to(app: Flask, body: bytes, headers: dict[str, str]) -> int:
    """POST `body` with `headers` to the README's receiver as a delivery; return its status."""
    client: FlaskClient = app.test_client()
    sent = {"Content-Type": "application/json", **headers}
    return client.post(receiver_path(app), data=body, headers=sent).status_code


def signed(hit: Hit) -> dict[str, str]:
    """Return the Standard Webhooks headers of a delivery as the worker sent them."""
    return {name: hit.headers[name] for name in SIGNED}


def test_the_readme_receiver_accepts_a_real_delivery_and_refuses_forgeries(
    receiver_app: Flask, delivery: Hit
) -> None:
    """The README's receiver takes a real delivery (2xx) and refuses forged ones (4xx)."""
    receiver_app.config["TESTING"] = True
    headers = signed(delivery)
    assert 200 <= post_to(receiver_app, delivery.body, headers) < 300

    tampered = delivery.body.replace(b'"world"', b'"w0rld"')
    assert tampered != delivery.body
    assert 400 <= post_to(receiver_app, tampered, headers) < 500

    message_id = headers["webhook-id"]
    now = int(time.time())
    forged = signed_headers(OTHER_SECRET, message_id, now, delivery.body)
    assert 400 <= post_to(receiver_app, delivery.body, forged) < 500

    stale = signed_headers(WEBHOOK_SECRET, message_id, now - 600, delivery.body)
    assert 400 <= post_to(receiver_app, delivery.body, stale) < 500

    assert 400 <= post_to(receiver_app, delivery.body, {}) < 500
