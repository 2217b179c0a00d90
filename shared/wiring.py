"""The service's wiring, built in one place: Redis connection, status index, job class, queue."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.job import Job

from shared.index import StatusIndex
from shared.job import tracked_job_class
from shared.redis import connect
from shared.settings import Settings


@dataclass(frozen=True)
class Services:
    """The settings, Redis connection, status index, job class and queue one process shares."""

    settings: Settings
    redis: Redis
    index: StatusIndex
    job_class: type[Job]
    queue: Queue


def build_services(settings: Settings, connection: Redis | None = None) -> Services:
    """Return the services for `settings`, on `connection` or a new connection pool."""
    redis = connection if connection is not None else connect(settings)
    index = StatusIndex(redis, settings.retention_seconds)
    job_class = tracked_job_class(index)
    queue = Queue(settings.queue_name, connection=redis, job_class=job_class)
    return Services(settings, redis, index, job_class, queue)
