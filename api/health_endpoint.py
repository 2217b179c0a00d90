"""The health endpoint: open to all, 200 when Redis answers and 503 when it does not."""

from __future__ import annotations

import logging

from flask import Blueprint, Response
from redis.exceptions import RedisError

from api.context import services
from api.responses import reply

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    """Return 200 when Redis answers a PING, else 503."""
    try:
        services().redis.ping()
    except RedisError as exc:
        logger.warning("health check: Redis unavailable: %s", exc)
        return reply(503, f"Redis unavailable: {exc}", queue_length=None)
    return reply(200, "healthy", response={"redis": "ok"})
