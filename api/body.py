"""The request body, read and parsed at most once per request whatever the content type says."""

from __future__ import annotations

import logging
from typing import Any

import gevent
from flask import current_app, g, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_content_length

from api.context import services
from api.errors import ApiError
from api.handover import handover
from api.validation import parse_body

logger = logging.getLogger(__name__)


def request_body() -> dict[str, Any]:
    """Return the request's JSON object body (`{}` when empty), or raise why it has none."""
    handed = handover()
    if "body" not in g and handed is not None:
        # Read and parsed (or failed) already, in the fast poll.
        g.body = handed.body
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
    return read_body(request.environ, limit, services().settings.body_timeout)


def body_of(environ: dict[str, Any], limit: int, seconds: float) -> dict[str, Any]:
    """Return the JSON object body of the WSGI request `environ` (as `read_body` reads it)."""
    return parse_body(read_body(environ, limit, seconds))


def read_body(environ: dict[str, Any], limit: int, seconds: float) -> bytes:
    """Return the body of the WSGI request `environ`, at most `limit` bytes, read within
    `seconds`; raise the error to answer when it is too large, too slow or cut short."""
    # The server's own stream, read as far as Content-Length says (PEP 3333), as werkzeug's
    # request.stream would, without its wrapper. A chunked upload (no Content-Length), which
    # request.stream would silently cut at the limit, is read one byte past it, to tell "too
    # large" apart.
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    stream = environ["wsgi.input"]
    # One deadline for the whole body, so that a client trickling it a byte at a time holds its
    # connection no longer than one that stalls. Under gunicorn's gevent worker the read waits
    # in the hub, where the timeout interrupts it; Flask's test client never waits, so never.
    # The timeout raises an Exception (not gevent's own BaseException) inside gunicorn's body
    # reader, which then marks the body failed and closes the connection after the answer:
    # the rest of a cut body, chunked or not, is never read as a next request.
    try:
        with gevent.Timeout(seconds, BodyTimeoutError(seconds)):
            data: bytes = stream.read(limit + 1 if length is None else length)
    except BodyTimeoutError:
        raise ApiError(408, f"Request body not received within {seconds} seconds") from None
    if len(data) > limit:
        raise RequestEntityTooLarge()
    if length is not None and len(data) < length:
        # The client closed before its whole body: werkzeug's own 400 for it.
        raise ClientDisconnected()
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
