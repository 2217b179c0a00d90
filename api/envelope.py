"""The No-Code Architects Toolkit response envelope: a pure builder and the Flask glue."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Response, g, jsonify, request
from redis.exceptions import RedisError

from api.body import client_id
from api.services import services

logger = logging.getLogger(__name__)

UNKNOWN: Any = object()


def envelope(
    *,
    code: int,
    message: str,
    id: Any = None,
    job_id: str | None = None,
    response: Any = None,
    run_time: float,
    queue_time: float = 0.0,
    pid: int,
    queue_id: str,
    queue_length: int | None,
    build_number: str,
    **extra: Any,
) -> dict[str, Any]:
    """Return the envelope dict; `extra` fields ride along after the standard ones."""
    return {
        "code": code,
        "id": id,
        "job_id": job_id,
        "response": response,
        "message": message,
        "run_time": round(run_time, 4),
        "queue_time": round(queue_time, 4),
        "total_time": round(queue_time + run_time, 4),
        "pid": pid,
        "queue_id": queue_id,
        "queue_length": queue_length,
        "build_number": build_number,
        **extra,
    }


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
    resp = jsonify(body)
    resp.status_code = code
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _queue_length() -> int | None:
    try:
        return int(services().queue.count)
    except RedisError as exc:
        logger.warning("queue length unavailable for %s %s: %s", request.method, request.path, exc)
        return None
