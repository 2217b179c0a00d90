"""rq-dashboard for real: its JSON over HTTP from gunicorn, a headless Chromium, and alone."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.command import send_stop_job_command

from tests.helpers import (
    Process,
    free_port,
    job_status,
    jobs_status,
    running,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.e2e

PASSWORD = "dashboard-secret-42"
BASIC = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
CHROMIUM = "chromium"
# As the machine's notes say: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, which this closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,720",
    # Lets the page's scripts fetch the JSON and render before the DOM or picture is taken.
    "--virtual-time-budget=8000",
]


@dataclass(frozen=True)
class Ran:
    """The jobs one dashboard scenario ran, by what became of them."""

    port: int
    done: list[str]
    failed: str
    running: str
    queued: str
    api: Process


def get(port: int, path: str, auth: str | None = BASIC) -> tuple[int, dict[str, str], bytes]:
    """GET `path` from 127.0.0.1:`port` with Basic `auth`; return status, headers and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": auth} if auth else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict[str, Any]:
    """GET a dashboard JSON endpoint with the right credentials; return its decoded body."""
    status, headers, body = get(port, path)
    assert status == 200, body
    assert headers["content-type"].startswith("application/json"), headers
    decoded: dict[str, Any] = json.loads(body)
    return decoded


def listed(port: int, registry: str) -> list[str]:
    """Return the ids rq-dashboard lists in `registry` of the default queue (newest 100)."""
    page = get_json(port, f"/dashboard/0/data/jobs/default/{registry}/100/asc/1.json")
    return [job["id"] for job in page["jobs"]]


@pytest.fixture
def ran(env: dict[str, str], conn: redis.Redis) -> Iterator[Ran]:
    """Run jobs through the API and one worker until they are done, failed, running, queued."""
    env = {**env, "DASHBOARD_PASSWORD": PASSWORD}
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(api := start_api(env, port)):
        done = [submit_ok(port, "echo", {"n": i}) for i in range(3)]
        failed = submit_ok(port, "fail", {"message": "on purpose"})
        for job_id in [*done, failed]:
            wait_finished(port, job_id)
        sleeping = submit_ok(port, "sleep", {"seconds": 300})
        wait_until(lambda: job_status(port, sleeping).body["response"]["job_status"] == "running")
        # The only worker is busy, so this one waits in the queue.
        queued = submit_ok(port, "echo", {"n": "waits"})
        yield Ran(port, done, failed, sleeping, queued, api)
        # Stop the long job through RQ's own command, so the worker can shut down at once.
        send_stop_job_command(conn, sleeping)


def test_dashboard_json_lists_each_job_in_the_registry_rq_put_it_in(ran: Ran) -> None:
    """queues.json counts, and the job lists name, the service's jobs where RQ keeps them."""
    queues = {q["name"]: q for q in get_json(ran.port, "/dashboard/0/data/queues.json")["queues"]}
    # The job queue alone: its webhook delivery queue is listed once a delivery is queued.
    assert set(queues) == {"default"}
    queue = queues["default"]
    assert queue["count"] == 1
    assert queue["finished_job_registry_count"] == 3
    assert queue["failed_job_registry_count"] == 1
    assert queue["started_job_registry_count"] == 1

    assert sorted(listed(ran.port, "finished")) == sorted(ran.done)
    assert listed(ran.port, "failed") == [ran.failed]
    assert listed(ran.port, "started") == [ran.running]
    assert listed(ran.port, "queued") == [ran.queued]

    job = get_json(ran.port, f"/dashboard/0/data/job/{ran.failed}.json")
    assert job["id"] == ran.failed
    assert job["status"] == "failed"
    assert "on purpose" in job["exc_info"]

    workers = get_json(ran.port, "/dashboard/0/data/workers.json")["workers"]
    # Each python -m worker registers its job worker and its webhook delivery worker.
    assert sorted(w["queues"] for w in workers) == [["default"], ["default:webhooks"]]
    (worker,) = [w for w in workers if w["queues"] == ["default"]]
    assert worker["state"] == "busy"
    assert worker["current_job"]["job_id"] == ran.running
    assert worker["queues"] == ["default"]
    assert (worker["successful_job_count"], worker["failed_job_count"]) == (3, 1)

    # The service's own answer agrees with the registries the dashboard read.
    listing = jobs_status(ran.port).body["response"]
    assert listing == {
        **dict.fromkeys(ran.done, "done"),
        ran.failed: "failed",
        ran.running: "running",
        ran.queued: "queued",
    }


def test_dashboard_refuses_wrong_credentials_over_http(ran: Ran) -> None:
    """Through gunicorn: no credentials or a wrong password get a JSON 401 with a challenge."""
    wrong = "Basic " + base64.b64encode(b"admin:not-the-password").decode()
    for auth in (None, wrong):
        status, headers, body = get(ran.port, "/dashboard/0/data/queues.json", auth=auth)
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic ")
        assert json.loads(body)["message"] == "Unauthorized"
        assert PASSWORD.encode() not in body


def png_size(path: Path) -> tuple[int, int]:
    """Return the width and height a PNG file's header declares."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a fresh profile and `args`; return what it did."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


def test_headless_chromium_loads_the_dashboard(ran: Ran, tmp_path: Path) -> None:
    """Chromium logs in with Basic auth, the page's scripts fetch the JSON, and it renders."""
    url = f"http://admin:{PASSWORD}@127.0.0.1:{ran.port}/dashboard/"
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Rendered by the page's script from queues.json (the page as served has no queue rows).
    row_link = 'href="/dashboard/0/view/jobs/default/finished/8/asc/1"'
    assert row_link not in get(ran.port, "/dashboard/")[2].decode()
    assert row_link in dom.stdout, dom.stdout
    assert "<span> version: 0.9.0" in dom.stdout
    assert PASSWORD not in dom.stdout
    log = ran.api.output()
    assert "GET /dashboard/ 200" in log
    assert "GET /dashboard/0/data/queues.json 200" in log

    shot = tmp_path / "dashboard.png"
    taken = chromium(f"--screenshot={shot}", url)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert png_size(shot) == (1280, 720)
    # `make screenshot` keeps the picture for docs/.
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_standalone_dashboard_serves_behind_basic_auth(env: dict[str, str]) -> None:
    """`python -m api.dashboard` (the compose service) serves /dashboard behind Basic auth."""
    port = free_port()
    env = {**env, "DASHBOARD_PASSWORD": PASSWORD, "DASHBOARD_PORT": str(port)}
    env.pop("API_KEY")
    proc = Process([sys.executable, "-m", "api.dashboard"], env, name="dashboard")
    with running(proc):

        def answers() -> tuple[int, dict[str, str], bytes] | None:
            assert proc.popen.poll() is None, proc.output()
            try:
                return get(port, "/")
            except OSError:
                return None

        status, headers, _ = wait_until(answers, timeout=30, interval=0.1)
        assert status == 302
        assert headers["location"] == "/dashboard/"
        assert get(port, "/dashboard/0/data/queues.json", auth=None)[0] == 401
        assert get_json(port, "/dashboard/0/data/queues.json") == {"queues": []}
        assert get(port, "/dashboard/")[0] == 200
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=20) == 0, proc.output()


def test_standalone_dashboard_refuses_to_start_without_a_password(env: dict[str, str]) -> None:
    """Without DASHBOARD_PASSWORD `python -m api.dashboard` exits 2 and says why."""
    env = {k: v for k, v in env.items() if k != "DASHBOARD_PASSWORD"}
    done = subprocess.run(
        [sys.executable, "-m", "api.dashboard"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "DASHBOARD_PASSWORD is not set" in done.stderr
