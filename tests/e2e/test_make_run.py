"""`make run`: the newcomer's command serves a job, and stops everything it started on a signal."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from tests.helpers import (
    API_KEY,
    Process,
    alive,
    free_port,
    running,
    submit_ok,
    wait_finished,
    wait_healthy,
    wait_until,
)

pytestmark = pytest.mark.e2e


def pgrep(*args: str) -> list[int]:
    """Return the pids `pgrep args` finds."""
    found = subprocess.run(["pgrep", *args], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def private_redis_pids(data: Path) -> list[int]:
    """Return the pids of the private redis-server serving from `data`."""
    return pgrep("-f", f"redis-server unixsocket:{data}/redis.sock")


def kill_if_alive(pid: int) -> None:
    """SIGKILL `pid` if it still runs."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_make_run_serves_a_job_and_a_signal_stops_everything(
    tmp_path: Path, signum: int, request: pytest.FixtureRequest
) -> None:
    """A job runs to done; Ctrl-C or SIGTERM to the group stops API, worker and private Redis."""
    port = free_port()
    data = tmp_path / "data"
    env = {
        k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PORT", "DASHBOARD_PASSWORD")
    }
    env.update(PORT=str(port), API_KEY=API_KEY, DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    # `make run` as a terminal runs it: one process group that Ctrl-C signals as a whole.
    make = Process(["make", "--no-print-directory", "run"], env, name="make-run")
    with running(make):
        wait_healthy(make, port)
        (server,) = wait_until(lambda: private_redis_pids(data), timeout=10)
        # Should the script leave its Redis behind, the test fails, and does not leak it.
        request.addfinalizer(lambda: kill_if_alive(server))
        job_id = submit_ok(port, "echo", {"from": "make run"})
        assert wait_finished(port, job_id)["job_status"] == "done"
        output = make.output()
        assert f"http://127.0.0.1:{port}/dashboard/ (user admin, password " in output

        os.killpg(make.popen.pid, signum)
        # Seen once: the idle worker noticed the signal only at its next dequeue wake-up (20 s).
        make.popen.wait(timeout=60)
        group = pgrep("-g", str(make.popen.pid))
        wait_until(lambda: not any(alive(pid) for pid in [server, *group]), timeout=30)
    assert "stopping..." in make.output()
    # The private Redis wrote its AOF and went away with the rest.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(data / "redis.sock"), socket_timeout=1).ping()
    assert any(data.glob("appendonly*")), list(data.iterdir())
