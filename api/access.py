"""Per-request bookkeeping: the timer, the request id, one log line and one latency sample."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Response, g, request

from api.request_metrics import observe_request

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own request id is kept when it is short and plain; anything else is replaced.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def start_request() -> None:
    """Start the request's timer and settle its request id."""
    g.started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex


def finish_request(resp: Response) -> Response:
    """Return the request id, log one line (never headers, so never the key), time the request."""
    request_id = g.get("request_id", "-")
    resp.headers[REQUEST_ID_HEADER] = request_id
    started = g.get("started")
    duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    # The full path, /dashboard included when the mounted dashboard answered.
    path = request.script_root + request.path
    try:
        seconds = duration_ms / 1000
        rule, mount = request.url_rule, request.script_root
        observe_request(request.method, rule, resp.status_code, seconds, mount)
    except Exception:
        # Metrics must never turn an answer into an error (say, a metrics directory removed).
        logger.exception("could not record the request's metrics")
    logger.info(
        "%s %s %d %.1fms id=%s",
        request.method,
        path,
        resp.status_code,
        duration_ms,
        request_id,
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": path,
            "status": resp.status_code,
            "duration_ms": round(duration_ms, 2),
        },
    )
    return resp
