"""Fixtures: one real redis-server per session (unix socket, temp dir), flushed per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.index import StatusIndex
from shared.redis import connect
from shared.settings import Settings
from tests.support import API_KEY, RedisServer
from worker.main import TrackingMixin, build_worker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Start one redis-server for the whole session."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    """Return settings pointing at the session's Redis, with an API key and a simple worker."""
    return Settings(redis_url=redis_server.url, api_key=API_KEY, worker_class="simple")


@pytest.fixture
def conn(settings: Settings) -> Iterator[redis.Redis]:
    """Return a flushed Redis connection built the way the service builds it."""
    connection = connect(settings)
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def index(conn: redis.Redis, settings: Settings) -> StatusIndex:
    """Return the status index on the test connection."""
    return StatusIndex(conn, settings.retention_seconds)


@pytest.fixture
def make_app(conn: redis.Redis, settings: Settings) -> Callable[..., Flask]:
    """Return a factory of apps whose settings differ from the default by keyword."""

    def make(**changes: Any) -> Flask:
        app = create_app(replace(settings, **changes))
        app.config["TESTING"] = True
        return app

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """Return the app with the test settings."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of the app."""
    return app.test_client()


@pytest.fixture
def run_worker(conn: redis.Redis, settings: Settings) -> Callable[..., TrackingMixin]:
    """Return a function that runs an in-process worker in burst mode until the queue is empty."""

    def run(**changes: Any) -> TrackingMixin:
        worker = build_worker(replace(settings, **changes), conn)
        worker.work(burst=True, with_scheduler=False)
        return worker

    return run
