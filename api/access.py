"""Per-request bookkeeping: the timer, the request id, one log line and one latency sample."""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time

from flask import Response, g, request
from werkzeug.routing import Rule

from api.handover import handover
from api.request_metrics import observe_request

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own request id is kept when it is short and plain; anything else is replaced.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIds:
    """Make request ids: 16 random hex digits per process, then a 16-digit count."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count()

    def next(self) -> str:
        """Return an id no other request of any process is given (a uuid4's length, 32 hex)."""
        # Unique, not secret: a counter instead of os.urandom for each request. A forked
        # gunicorn worker draws its own prefix.
        if self._pid != os.getpid():
            self._pid, self._prefix = os.getpid(), secrets.token_hex(8)
        return f"{self._prefix}{next(self._count):016x}"


request_ids = RequestIds()


def request_id_of(given: str) -> str:
    """Return the request id to answer with: the caller's `given` one when plain, else a new one."""
    return given if REQUEST_ID_RE.fullmatch(given) else request_ids.next()


def start_request() -> None:
    """Start the request's timer and settle its request id (the fast poll's, when it began)."""
    handed = handover()
    if handed is not None:
        g.started, g.request_id = handed.started, handed.request_id
        return
    g.started = time.perf_counter()
    g.request_id = request_id_of(request.headers.get(REQUEST_ID_HEADER, ""))


def finish_request(resp: Response) -> Response:
    """Return the request id, log one line (never headers, so never the key), time the request."""
    request_id = g.get("request_id", "-")
    resp.headers[REQUEST_ID_HEADER] = request_id
    started = g.get("started")
    duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    method, mount, status = request.method, request.script_root, resp.status_code
    # The full path, /dashboard included when the mounted dashboard answered.
    path = mount + request.path
    account(method, path, status, duration_ms, request_id, request.url_rule, mount)
    return resp


def account(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    request_id: str,
    rule: Rule | None,
    mount: str = "",
) -> None:
    """Count an answered request in the latency histogram and log its one line."""
    try:
        observe_request(method, rule, status, duration_ms / 1000, mount)
    except Exception:
        # Metrics must never turn an answer into an error (say, a metrics directory removed).
        logger.exception("could not record the request's metrics")
    logger.info(
        "%s %s %d %.1fms id=%s",
        method,
        path,
        status,
        duration_ms,
        request_id,
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 2),
        },
    )
