"""Answer the current request with the envelope: its client id, timing and queue length."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Response, g, request
from redis.exceptions import RedisError

from api.body import client_id
from api.context import services
from api.encoding import encode
from shared.envelope import envelope

logger = logging.getLogger(__name__)

UNKNOWN: Any = object()


def reply(
    code: int,
    message: str,
    *,
    response: Any = None,
    job_id: str | None = None,
    queue_length: Any = UNKNOWN,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Return a Flask response carrying the envelope for the current request."""
    svc = services()
    if queue_length is UNKNOWN:
        # A refusal of the request (4xx) does not wait on Redis for the queue length.
        queue_length = None if 400 <= code < 500 else _queue_length()
    started = g.get("started", time.perf_counter())
    body = envelope(
        code=code,
        message=message,
        id=client_id(),
        job_id=job_id,
        response=response,
        run_time=time.perf_counter() - started,
        pid=os.getpid(),
        queue_id=svc.settings.queue_name,
        queue_length=queue_length,
        build_number=svc.settings.build_number,
        **extra,
    )
    resp = Response(encode(body), status=code, mimetype="application/json")
    if headers:
        resp.headers.update(headers)
    return resp


def _queue_length() -> int | None:
    try:
        return int(services().queue.count)
    except RedisError as exc:
        logger.warning("queue length unavailable for %s %s: %s", request.method, request.path, exc)
        return None
