"""The API key check and the authenticate endpoint."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from api.envelope import reply
from api.errors import ApiError
from api.services import services

API_KEY_HEADER = "x-api-key"

bp = Blueprint("auth", __name__)


def require_api_key() -> None:
    """Refuse the request with 401 unless it carries the configured key."""
    expected = services().settings.require_api_key().encode()
    given = request.headers.get(API_KEY_HEADER, "").encode("utf-8", "surrogateescape")
    # compare_digest takes the same time wherever the first difference lies.
    if not hmac.compare_digest(given, expected):
        raise ApiError(401, "Unauthorized")


bp.before_request(require_api_key)


@bp.get("/v1/toolkit/authenticate")
def authenticate() -> Response:
    """Answer 200 "Authorized" to a caller whose key is right."""
    return reply(200, "success", response="Authorized")
