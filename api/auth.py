"""The API key check and the authenticate endpoint."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from api.context import services
from api.errors import ApiError
from api.responses import reply

API_KEY_HEADER = "x-api-key"

bp = Blueprint("auth", __name__)


def require_api_key() -> None:
    """Refuse the request with 401 unless it carries the configured key."""
    if not _is_key(request.headers.get(API_KEY_HEADER, "")):
        raise ApiError(401, "Unauthorized")


def require_api_key_or_bearer() -> None:
    """Refuse with 401 unless the key comes in x-api-key or as `Authorization: Bearer <key>`."""
    if not has_api_key():
        raise ApiError(401, "Unauthorized")


def has_api_key() -> bool:
    """Return whether the request carries the key in x-api-key or as a Bearer token."""
    bearer = bearer_token(request.headers.get("Authorization", ""))
    return _is_key(request.headers.get(API_KEY_HEADER, "")) or _is_key(bearer)


def bearer_token(header: str) -> str:
    """Return the token of an `Authorization: Bearer <token>` value, else an empty string."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _is_key(given: str) -> bool:
    return is_key(given, services().settings.require_api_key().encode())


def is_key(given: str, expected: bytes) -> bool:
    """Return whether `given` (a header's value) is the key `expected`, in constant time."""
    # compare_digest takes the same time wherever the first difference lies.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


bp.before_request(require_api_key)


@bp.get("/v1/toolkit/authenticate")
def authenticate() -> Response:
    """Answer 200 "Authorized" to a caller whose key is right."""
    return reply(200, "success", response="Authorized")
