"""Turn every error, of any origin, into the JSON envelope: never an HTML page."""

from __future__ import annotations

import logging

from flask import Flask, Response
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.errors import ApiError
from api.responses import reply
from shared.exceptions import IndexNotFoundError

logger = logging.getLogger(__name__)


def register_error_handlers(app: Flask) -> None:
    """Install handlers so that every failure answers with the JSON envelope."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return reply(exc.code, exc.message, headers=exc.headers, **exc.fields)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return reply(413, f"Request body too large: the limit is {limit} bytes")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return reply(code, exc.name, headers=headers)

    @app.errorhandler(IndexNotFoundError)
    def no_index(exc: IndexNotFoundError) -> Response:
        return reply(404, "Jobs directory not found")

    @app.errorhandler(RedisError)
    def redis_error(exc: RedisError) -> Response:
        logger.error("Redis error: %s", exc)
        return reply(500, f"Redis error: {exc}", queue_length=None)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return reply(500, "Internal server error")
