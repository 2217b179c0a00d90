"""Fixtures for worker tests: the tracked queue, a status observer, real worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from rq.job import Job

from shared.index import StatusIndex
from shared.settings import Settings
from tests.helpers import (
    Observed,
    Process,
    RedisServer,
    indexed,
    kill_children,
    service_env,
    start_worker,
)
from worker.main import TrackingMixin, build_worker


@pytest.fixture
def observe(conn: redis.Redis, index: StatusIndex) -> Callable[[str], Observed]:
    """Return a function giving a job's (indexed status, RQ's own status) right now."""

    def look(job_id: str) -> Observed:
        found = indexed(conn, job_id)
        rq_status = Job.fetch(job_id, connection=conn).get_status()
        return (found[0] if found else None), rq_status

    return look


@pytest.fixture
def make_worker(conn: redis.Redis, settings: Settings) -> Callable[[], TrackingMixin]:
    """Return a factory of in-process workers with the test settings, not yet working."""
    return lambda: build_worker(settings, conn)


@pytest.fixture
def worker_process(redis_server: RedisServer) -> Iterator[Callable[..., Process]]:
    """Return a starter of `python -m worker` processes, all stopped after the test."""
    started: list[Process] = []

    def start(**env: str) -> Process:
        proc = start_worker(service_env(redis_server.url, **env), name="worker-test")
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            kill_children(proc)
            proc.stop(timeout=5)
