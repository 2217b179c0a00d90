"""Fixtures: one real redis-server per session (unix socket, temp dir), flushed per test; every
temporary file of the session, its processes' included, under pytest's temporary directory."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis.configuration import set_hypothesis_home_dir
from rq import Queue
from rq.job import Job

from api import create_app
from api.context import EXTENSION
from shared import keys
from shared.index import StatusIndex
from shared.job import TrackedJob
from shared.redis import connect
from shared.settings import Settings
from shared.wiring import Services, build_services
from tests.helpers import API_KEY, WEBHOOK_SECRET, Process, RedisServer
from worker.main import TrackingMixin, build_worker

# The system's temporary directory and what it held when the session started; and the entry
# in it that holds pytest's own temporary directories (named once the session has one).
SYSTEM_TEMP = pytest.StashKey[tuple[Path, frozenset[str]]]()
PYTEST_TEMP = pytest.StashKey[str]()
LITTER = pytest.StashKey[list[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note what the system's temporary directory holds before any test runs."""
    root = Path(tempfile.gettempdir()).resolve()
    session.config.stash[SYSTEM_TEMP] = (root, frozenset(os.listdir(root)))
    # Hypothesis writes its storage while the tests are still being collected, before any
    # fixture runs. Beside the virtualenv it outlives the session, so a failing example is
    # replayed by the next run; without one, it goes under pytest's temporary directory.
    if sys.prefix != sys.base_prefix:
        set_hypothesis_home_dir(Path(sys.prefix) / "hypothesis")
    else:
        factory: pytest.TempPathFactory = session.config._tmp_path_factory  # type: ignore[attr-defined]
        set_hypothesis_home_dir(factory.mktemp("hypothesis"))


@pytest.fixture(scope="session", autouse=True)
def private_temp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Send every temporary file of the session under pytest's temporary directory.

    Spawned processes inherit TMPDIR (gunicorn's metrics directory, Chromium's profile, `make
    run`'s files); Process logs are pointed there directly.
    """
    # Asked for first, so that pytest places its own directory by the real TMPDIR.
    basetemp = tmp_path_factory.getbasetemp().resolve()
    stash = request.config.stash
    if SYSTEM_TEMP in stash:
        root, _ = stash[SYSTEM_TEMP]
        if basetemp.is_relative_to(root) and basetemp != root:
            stash[PYTEST_TEMP] = basetemp.relative_to(root).parts[0]
    scratch = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(scratch))
        # tempfile caches the directory it found first; None makes it look again.
        patch.setattr(tempfile, "tempdir", None)
        patch.setattr(Process, "log_dir", tmp_path_factory.mktemp("logs"))
        yield scratch


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if it left anything new in the system's temporary directory."""
    stash = session.config.stash
    if SYSTEM_TEMP not in stash:
        return
    root, before = stash[SYSTEM_TEMP]
    ours = {stash[PYTEST_TEMP]} if PYTEST_TEMP in stash else set()
    litter = sorted(set(os.listdir(root)) - before - ours)
    stash[LITTER] = litter
    if litter and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name what the run left in the system's temporary directory, if anything."""
    litter = terminalreporter.config.stash.get(LITTER, [])
    if litter:
        root, _ = terminalreporter.config.stash[SYSTEM_TEMP]
        terminalreporter.write_sep("=", f"left behind in {root} (the run fails)", red=True)
        for name in litter:
            terminalreporter.write_line(str(root / name))
        # A listing cannot tell whose an entry is: another program may have made it meanwhile.
        terminalreporter.write_line("(new since the session started: this run's, or another's)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Start one redis-server for the whole session."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    """Return settings pointing at the session's Redis, with an API key and a simple worker."""
    return Settings(
        redis_url=redis_server.url,
        api_key=API_KEY,
        worker_class="simple",
        webhook_secret=WEBHOOK_SECRET,
    )


@pytest.fixture
def conn(settings: Settings) -> Iterator[redis.Redis]:
    """Return a flushed Redis connection built the way the service builds it."""
    connection = connect(settings)
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def services(conn: redis.Redis, settings: Settings) -> Services:
    """Return the service's wiring on the test connection, built as the API and worker build it."""
    return build_services(settings, conn)


@pytest.fixture
def index(services: Services) -> StatusIndex:
    """Return the status index on the test connection."""
    return services.index


@pytest.fixture
def job_class(services: Services) -> type[Job]:
    """Return the service's tracked job class."""
    return TrackedJob


@pytest.fixture
def queue(services: Services) -> Queue:
    """Return the service's queue, with the tracked job class, on the test connection."""
    return services.queue


@pytest.fixture
def fake() -> Iterator[fakeredis.FakeRedis]:
    """Return an empty fakeredis client, for unit tests that need a Redis-shaped object."""
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def make_app(conn: redis.Redis, settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Return a factory of apps whose settings differ from the default by keyword; their Redis
    connections are closed after the test."""
    made: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = create_app(replace(settings, **changes))
        app.config["TESTING"] = True
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions[EXTENSION].redis.connection_pool.disconnect()


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
        # One in-process worker for both queues (the service runs one per queue: a forking
        # worker serving two cannot keep a job it took safe from its own death).
        worker = build_worker(
            replace(settings, **changes),
            conn,
            [keys.webhook_queue_name(settings.queue_name), settings.queue_name],
        )
        worker.work(burst=True, with_scheduler=False)
        return worker

    return run
