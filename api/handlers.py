"""Turn every error, of any origin, into the JSON envelope: never an HTML page."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, request
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TimeoutError,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import RequestRedirect

from api.context import services
from api.errors import ApiError
from api.responses import reply
from shared.exceptions import IndexNotFoundError

logger = logging.getLogger(__name__)

# What each endpoint was doing, to name a Redis failure in words.
ACTIONS = {
    "jobs.jobs_status": "Failed to retrieve job statuses",
    "jobs.job_status": "Failed to retrieve the job's status",
    "jobs.job_status_get": "Failed to retrieve the job's status",
    "jobs.submit": "Failed to submit the job",
    "actions.cancel": "Failed to cancel the job",
    "actions.retry": "Failed to retry the job",
}
DEFAULT_ACTION = "Request failed"


def redis_failure(exc: RedisError) -> str | None:
    """Return in words why Redis could not serve, or None for an error of ours, not Redis's."""
    # Checked before ConnectionError, its base class.
    if isinstance(exc, BusyLoadingError):
        return "Redis is loading its data"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "Redis unavailable"
    if isinstance(exc, OutOfMemoryError):
        return "Redis is out of memory"
    if isinstance(exc, ReadOnlyError):
        return "Redis is read-only"
    # redis-py prefixes an error inside a MULTI with the command that caused it.
    if re.search(r"(^|caused error: )MISCONF", str(exc)):
        # Redis refuses writes after a failed snapshot (stop-writes-on-bgsave-error).
        return "Redis refuses writes"
    return None


def register_error_handlers(app: Flask) -> None:
    """Install handlers so that every failure answers with the JSON envelope."""

    @app.after_request
    def json_redirect(resp: Response) -> Response:
        # Flask hands routing redirects (a missing trailing slash) past every error handler,
        # as Werkzeug's HTML page: answer them with the envelope, Location kept.
        # (A hook that answered first, the login check, leaves its own answer alone.)
        location = resp.headers.get("Location")
        if isinstance(request.routing_exception, RequestRedirect) and location is not None:
            return reply(
                resp.status_code,
                f"Moved to {location}",
                headers={"Location": location},
                queue_length=None,
            )
        return resp

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
        # Redis's own words (command text, key names, its address) go to the log only.
        logger.error(
            "%s %s: Redis error: %s: %s", request.method, request.path, type(exc).__name__, exc
        )
        action = ACTIONS.get(request.endpoint or "", DEFAULT_ACTION)
        failure = redis_failure(exc)
        if failure is None:
            return reply(500, f"{action}: internal error", queue_length=None)
        retry = str(services().settings.retry_after_seconds)
        return reply(503, f"{action}: {failure}", headers={"Retry-After": retry}, queue_length=None)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return reply(500, "Internal server error")
