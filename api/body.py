"""The request body, parsed once per request whatever the content type says."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, request
from werkzeug.exceptions import HTTPException

from api.errors import ApiError
from api.validation import parse_body

logger = logging.getLogger(__name__)


def request_body() -> dict[str, Any]:
    """Return the request's JSON object body (`{}` when empty), or raise ApiError."""
    if "body" not in g:
        # No-code tools often send JSON under other content types, so the body is read as
        # JSON whatever the header says.
        g.body = parse_body(request.get_data(cache=True))
    body: dict[str, Any] = g.body
    return body


def client_id() -> Any:
    """Return the client's `id` from the body, or None when there is no readable one."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    try:
        return request_body().get("id")
    except (ApiError, HTTPException) as exc:
        logger.debug("no client id in the body: %s", exc)
        return None
