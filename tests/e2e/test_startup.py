"""Start-up validation: a misconfigured process exits at once, naming the bad variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import BIN, ROOT, RedisServer, free_port, service_env

pytestmark = pytest.mark.e2e

EXIT_TIMEOUT = 30


def run_to_exit(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the project directory and return how it exited (failing if it lingers)."""
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT
    )


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"API_KEY": None}, "API_KEY"),
        ({"API_KEY": ""}, "API_KEY"),
        ({"API_KEY": "short"}, "API_KEY"),
        ({"MAX_QUEUE_LENGTH": "abc"}, "MAX_QUEUE_LENGTH"),
    ],
    ids=["no-api-key", "empty-api-key", "short-api-key", "max-queue-length-abc"],
)
def test_gunicorn_refuses_to_start_with_bad_configuration(
    redis_server: RedisServer, overrides: dict[str, str | None], variable: str
) -> None:
    """gunicorn 'api:create_app()' exits non-zero with one line naming the bad variable."""
    env = service_env(redis_server.url)
    for name, value in overrides.items():
        if value is None:
            del env[name]
        else:
            env[name] = value
    argv = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{free_port()}", "api:create_app()"]
    done = run_to_exit(argv, env)
    assert done.returncode != 0, done.stderr
    assert variable in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_worker_refuses_to_start_with_an_unknown_worker_class(redis_server: RedisServer) -> None:
    """`python -m worker` with WORKER_CLASS=bogus exits non-zero naming WORKER_CLASS."""
    env = service_env(redis_server.url, WORKER_CLASS="bogus")
    done = run_to_exit([sys.executable, "-m", "worker"], env)
    assert done.returncode != 0, done.stderr
    assert "WORKER_CLASS" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
