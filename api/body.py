"""The request body, read and parsed at most once per request whatever the content type says."""

from __future__ import annotations

import logging
from typing import Any

import gevent
from flask import current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.context import services
from api.errors import ApiError
from api.validation import parse_body

logger = logging.getLogger(__name__)


def request_body() -> dict[str, Any]:
    """Return the request's JSON object body (`{}` when empty), or raise why it has none."""
    if "body" not in g:
        # The outcome is kept, failure included: the error answer's client `id` comes from
        # here too, and a malformed body is not read or parsed a second time for it.
        try:
            # No-code tools often send JSON under other content types, so the body is read
            # as JSON whatever the header says.
            g.body = parse_body(_read_limited())
        except (ApiError, HTTPException) as exc:
            g.body = exc
    if isinstance(g.body, Exception):
        raise g.body
    body: dict[str, Any] = g.body
    return body


class BodyTimeoutError(Exception):
    """The request body did not arrive within BODY_TIMEOUT."""


def _read_limited() -> bytes:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    # Werkzeug refuses an over-long Content-Length itself, but silently cuts a chunked upload
    # (no Content-Length) at the limit: read that one from the server's own stream, one byte
    # past the limit, to tell "too large" apart.
    chunked = request.content_length is None
    stream = request.environ["wsgi.input"] if chunked else request.stream
    seconds = services().settings.body_timeout
    # One deadline for the whole body, so that a client trickling it a byte at a time holds its
    # connection no longer than one that stalls. Under gunicorn's gevent worker the read waits
    # in the hub, where the timeout interrupts it; Flask's test client never waits, so never.
    # The timeout raises an Exception (not gevent's own BaseException) inside gunicorn's body
    # reader, which then marks the body failed and closes the connection after the answer:
    # the rest of a cut body, chunked or not, is never read as a next request.
    try:
        with gevent.Timeout(seconds, BodyTimeoutError(seconds)):
            data: bytes = stream.read(limit + 1)
    except BodyTimeoutError:
        raise ApiError(408, f"Request body not received within {seconds} seconds") from None
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def client_id() -> Any:
    """Return the client's `id` from the body, or None when there is no readable one."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    try:
        return request_body().get("id")
    except (ApiError, HTTPException) as exc:
        logger.debug("no client id in the body: %s", exc)
        return None
