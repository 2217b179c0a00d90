"""Fixtures for end-to-end tests: service environments on the session or a private Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import RedisServer, service_env


@pytest.fixture
def env(conn: redis.Redis, redis_server: RedisServer) -> dict[str, str]:
    """Return the environment of a service process on the freshly flushed session Redis."""
    return service_env(redis_server.url)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Start a redis-server of this test's own, which the test may stop and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
