"""The health endpoint: open to all, 200 while Redis answers and takes writes, else 503.

Without the key it says only that; with it (x-api-key or Bearer), what it read from Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response
from redis.exceptions import RedisError

from api import redis_health
from api.auth import has_api_key
from api.context import services
from api.responses import reply

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    """Return 200 when Redis answers and accepts writes, else 503."""
    svc = services()
    try:
        state = redis_health.check(svc.redis, svc.queue, svc.budget)
    except RedisError as exc:
        logger.warning("health check: Redis unavailable: %s: %s", type(exc).__name__, exc)
        return _answer(503, "Redis unavailable", {"redis": "unavailable"}, None)
    details = {
        "redis": "ok" if state.writable else "refusing writes",
        "used_memory": state.used_memory,
        "maxmemory": state.maxmemory,
        "accepting_jobs": state.accepting_jobs,
    }
    if not state.writable:
        return _answer(503, "Redis refuses writes", details, state.waiting)
    return _answer(200, "healthy", details, state.waiting)


def _answer(code: int, detail: str, details: dict[str, Any], waiting: int | None) -> Response:
    # The queue length comes from the reading made: no second call to a Redis that may be down.
    if has_api_key():
        return reply(code, detail, response=details, queue_length=waiting)
    # Anyone may ask; only the key holder learns more than healthy or not.
    return reply(code, "healthy" if code == 200 else "unhealthy", queue_length=None)
