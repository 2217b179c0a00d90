"""What the request handlers share: settings and Redis-backed objects, built by the factory."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis
from rq import Queue
from rq.job import Job

from shared.index import StatusIndex
from shared.job import tracked_job_class
from shared.redis import connect
from shared.settings import Settings

EXTENSION = "toolkit_jobs"


@dataclass(frozen=True)
class Services:
    """The app's settings, Redis connection, status index, job class and queue."""

    settings: Settings
    redis: Redis
    index: StatusIndex
    job_class: type[Job]
    queue: Queue


def services() -> Services:
    """Return the services of the current app."""
    svc: Services = current_app.extensions[EXTENSION]
    return svc


def build_services(settings: Settings) -> Services:
    """Return the services for `settings`: one Redis connection pool, the index, the queue."""
    connection = connect(settings)
    index = StatusIndex(connection, settings.retention_seconds)
    job_class = tracked_job_class(index)
    queue = Queue(settings.queue_name, connection=connection, job_class=job_class)
    return Services(settings, connection, index, job_class, queue)
