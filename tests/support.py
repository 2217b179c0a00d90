"""Helpers for tests: waiting with a deadline, free ports, and real service processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import redis
from rq.job import JobStatus

from shared import keys
from shared.index import StatusIndex
from shared.status import Status

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
API_KEY = "test-key-0123456789"
AUTH = {"x-api-key": API_KEY}


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Return the first truthy value of `predicate()`, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on a unix socket in a temporary folder."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: run `make test`, which installs it"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _pings(client), timeout=10)
        client.close()
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a client of this server."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5, **kwargs)

    def stop(self) -> None:
        """Stop the server (SIGTERM), waiting for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def service_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Return the environment for a service process of the project."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEY", "PORT")}
    env.update(
        REDIS_URL=redis_url,
        API_KEY=API_KEY,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        MAINTENANCE_INTERVAL="1",
    )
    env.update(overrides)
    return env


class Process:
    """A project process (gunicorn or a worker) whose output goes to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        """Return what the process has written so far."""
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send `signum` to the process."""
        self.popen.send_signal(signum)

    def stop(self, timeout: float = 15) -> None:
        """Stop the process group with SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
            except ProcessLookupError:
                pass


def start_api(
    env: dict[str, str], port: int, workers: int = 2, ready_path: str = "/health"
) -> Process:
    """Start gunicorn serving the API on 127.0.0.1:`port`; wait until `ready_path` answers 200.

    `/health` needs Redis; `/v1/toolkit/authenticate` (sent with the key) does not.
    """
    proc = Process(
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "api:create_app()",
        ],
        env,
        name=f"api-{port}",
    )
    import urllib.request

    def healthy() -> bool:
        assert proc.popen.poll() is None, f"gunicorn exited:\n{proc.output()}"
        probe = urllib.request.Request(
            f"http://127.0.0.1:{port}{ready_path}", headers={"x-api-key": API_KEY}
        )
        try:
            with urllib.request.urlopen(probe, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=30, interval=0.1)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_worker(env: dict[str, str], name: str = "worker") -> Process:
    """Start `python -m worker` with `env`."""
    return Process([sys.executable, "-m", "worker"], env, name=name)


@contextmanager
def running(*processes: Process) -> Iterator[None]:
    """Stop `processes` on the way out, whatever happened."""
    try:
        yield
    finally:
        for proc in processes:
            proc.stop()


def indexed(conn: redis.Redis, job_id: str) -> tuple[Status, int] | None:
    """Return the indexed status of `job_id` and its score (µs of Redis time), if any."""
    with conn.pipeline(transaction=False) as pipe:
        for status in Status:
            pipe.zscore(keys.status_index_key(status), job_id)
        scores = pipe.execute()
    for status, score in zip(Status, scores, strict=True):
        if score is not None:
            return status, int(score)
    return None


def record(index: StatusIndex, job_id: str, rq_status: JobStatus) -> None:
    """Record `rq_status` for `job_id` in `index` in a transaction of its own."""
    with index.connection.pipeline() as pipe:
        index.record(job_id, rq_status, pipe)
        pipe.execute()
