"""The containers' health checks: the API's /health probe and the worker's registry lookup."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from api.healthcheck import probe
from shared.settings import Settings
from tests.helpers import (
    RedisServer,
    free_port,
    running,
    service_env,
    start_api,
    start_worker,
    wait_until,
)
from worker.healthcheck import live_workers
from worker.main import build_worker


class Answer(BaseHTTPRequestHandler):
    """Answer every GET with the server's `status`."""

    def do_GET(self) -> None:
        """Send the configured status with an empty body."""
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def answering() -> Iterator[ThreadingHTTPServer]:
    """Return a local HTTP server whose answer status the test sets."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_check(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m module` as a container runtime would; return how it ended."""
    return subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (500, False)])
def test_api_probe_is_healthy_only_on_200(
    answering: ThreadingHTTPServer, status: int, healthy: bool
) -> None:
    """The API probe passes on 200 from /health and fails on 503 (Redis down) or any other."""
    answering.status = status  # type: ignore[attr-defined]
    ok, line = probe(answering.server_address[1])
    assert ok is healthy
    assert str(status) in line


def test_api_probe_fails_when_nothing_listens() -> None:
    """The API probe fails, saying why, when nothing listens on the port."""
    ok, line = probe(free_port())
    assert not ok
    assert "failed" in line


def test_worker_check_finds_only_live_workers_of_this_host(
    conn: redis.Redis, settings: Settings
) -> None:
    """Only workers registered from this host count, and only until they leave."""
    hostname = socket.gethostname()
    assert live_workers(conn, settings.queue_name, hostname) == []
    elsewhere = build_worker(settings, conn)
    elsewhere.hostname = "another-host"
    elsewhere.register_birth()
    assert live_workers(conn, settings.queue_name, hostname) == []
    here = build_worker(settings, conn)
    here.register_birth()
    assert [w.name for w in live_workers(conn, settings.queue_name, hostname)] == [here.name]
    assert live_workers(conn, "another-queue", hostname) == []
    here.register_death()
    assert live_workers(conn, settings.queue_name, hostname) == []


def test_worker_check_fails_when_the_registration_expired(
    conn: redis.Redis, settings: Settings
) -> None:
    """A worker whose heartbeats stopped (its key expired) is not live."""
    worker = build_worker(settings, conn)
    worker.register_birth()
    conn.delete(worker.key)  # what the key's TTL does once heartbeats stop
    assert live_workers(conn, settings.queue_name, socket.gethostname()) == []


@pytest.mark.e2e
def test_api_healthcheck_module_against_gunicorn(
    conn: redis.Redis, redis_server: RedisServer
) -> None:
    """`python -m api.healthcheck` exits 0 while gunicorn serves on $PORT and 1 once it stops."""
    port = free_port()
    env = service_env(redis_server.url, PORT=str(port))
    api = start_api(env, port, workers=1)
    with running(api):
        passed = run_check("api.healthcheck", env)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert f"127.0.0.1:{port}/health: 200" in passed.stdout
    failed = run_check("api.healthcheck", env)
    assert failed.returncode == 1


@pytest.mark.e2e
def test_api_healthcheck_module_rejects_bad_configuration(redis_server: RedisServer) -> None:
    """A bad setting makes the check exit 1 (never Docker's reserved 2), naming the variable."""
    result = run_check("api.healthcheck", service_env(redis_server.url, PORT="http"))
    assert result.returncode == 1
    assert "PORT" in result.stderr


@pytest.mark.e2e
def test_worker_healthcheck_module_follows_a_worker_process(
    conn: redis.Redis, redis_server: RedisServer
) -> None:
    """`python -m worker.healthcheck` exits 1 before a worker starts, 0 while it runs, 1 after."""
    env = service_env(redis_server.url)
    assert run_check("worker.healthcheck", env).returncode == 1
    worker = start_worker(env, name="worker-healthcheck")
    with running(worker):
        passed = wait_until(
            lambda: (r := run_check("worker.healthcheck", env)).returncode == 0 and r,
            timeout=30,
            interval=0.2,
        )
        assert "heartbeat" in passed.stdout
    # SIGTERM: RQ's warm shutdown takes the worker out of the registry.
    assert run_check("worker.healthcheck", env).returncode == 1
