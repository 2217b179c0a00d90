"""Fixtures for the client's tests: one real API (gunicorn) and worker on a Redis of their own,
shared by the package's tests, and clients of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    API_KEY,
    RedisServer,
    free_port,
    running,
    service_env,
    start_api,
    start_worker,
)
from toolkit_jobs import Client


@dataclass(frozen=True)
class Service:
    """A running API (and worker) the tests reach over HTTP."""

    url: str
    api_key: str
    redis: RedisServer


@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Start a Redis, the API and one worker for the package's tests; stop them at the end.

    The Redis is the package's own: the session's is flushed between tests, which would pull
    the index from under a service that outlives one test.
    """
    server = RedisServer(Path(tmp_path_factory.mktemp("client-redis"))).start()
    env = service_env(server.url)
    port = free_port()
    try:
        api = start_api(env, port, workers=2)
        with running(api, start_worker(env)):
            yield Service(f"http://127.0.0.1:{port}", API_KEY, server)
    finally:
        server.stop()


@pytest.fixture
def toolkit(service: Service) -> Iterator[Client]:
    """Return a client of the running service, closed after the test."""
    with Client(service.url, service.api_key) as made:
        yield made
