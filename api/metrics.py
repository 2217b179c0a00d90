"""GET /metrics: Prometheus text from Redis (queues, index, transitions) and every API process."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from api.auth import require_api_key_or_bearer
from api.context import services
from api.redis_metrics import RedisCollector

bp = Blueprint("metrics", __name__)
bp.before_request(require_api_key_or_bearer)


@bp.get("/metrics")
def metrics() -> Response:
    """Return every metric in the Prometheus text format."""
    svc = services()
    # A fresh registry per scrape: the multiprocess collector reads every worker's files now.
    registry = CollectorRegistry()
    directory = svc.settings.prometheus_multiproc_dir
    if directory is not None:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    registry.register(RedisCollector(svc.redis, svc.queue, svc.budget))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
