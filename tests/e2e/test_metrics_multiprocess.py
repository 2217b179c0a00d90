"""/metrics under several gunicorn workers: every scrape sums all workers, dead ones included."""

from __future__ import annotations

import http.client
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from prometheus_client import CONTENT_TYPE_LATEST

from tests.helpers import (
    API_KEY,
    HOST,
    TIMEOUT,
    Reply,
    Samples,
    call,
    child_pids,
    free_port,
    parse_samples,
    post_job,
    running,
    start_api,
    wait_until,
)

pytestmark = pytest.mark.e2e

WORKERS = 3
ROUTE = "/v1/toolkit/authenticate"
COUNT = "toolkit_jobs_request_duration_seconds_count"
REFUSED = "toolkit_jobs_submissions_refused_total"
CLIENTS = 6


def scrape(port: int) -> Samples:
    """GET /metrics with a Bearer token on a fresh connection; return every sample."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200, text
        assert resp.getheader("Content-Type") == CONTENT_TYPE_LATEST
    finally:
        conn.close()
    return parse_samples(text)


def route_count(port: int) -> float:
    """Return the histogram count of 200 answers to GET ROUTE, as one scrape sees it."""
    labels = (("method", "GET"), ("route", ROUTE), ("status", "200"))
    return scrape(port).get((COUNT, labels), 0.0)


def refused(port: int) -> float:
    """Return the count of 429 refusals, as one scrape sees it."""
    return scrape(port)[(REFUSED, (("reason", "queue_full"),))]


def burst(port: int, send: int, request: str) -> list[Reply]:
    """Send `send` requests from CLIENTS threads, each on its own connection; return replies."""

    def one(_: int) -> Reply:
        if request == "authenticate":
            return call(port, "GET", ROUTE)
        return post_job(port, "echo", {})

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(send)))


def until_several_workers(port: int, request: str, status: int) -> tuple[int, set[int]]:
    """Send bursts of `request` until at least two workers answered; return (sent, pids)."""
    sent = 0
    pids: set[int] = set()

    def spread() -> bool:
        nonlocal sent
        replies = burst(port, 30, request)
        sent += len(replies)
        assert all(reply.status == status for reply in replies), [r.body for r in replies]
        pids.update(reply.body["pid"] for reply in replies)
        return len(pids) >= 2

    wait_until(spread, timeout=60, interval=0)
    return sent, pids


def metrics_env(env: dict[str, str]) -> dict[str, str]:
    """Return `env` with a queue limit of 1 (no worker runs, so the queue stays full)."""
    return {**env, "MAX_QUEUE_LENGTH": "1"}


def test_counts_are_summed_over_workers_and_survive_a_killed_worker(
    conn: redis.Redis, env: dict[str, str]
) -> None:
    """Every scrape sees all workers' requests and 429s, also after one worker is SIGKILLed."""
    port = free_port()
    with running(api := start_api(metrics_env(env), port, workers=WORKERS)):
        answered, pids = until_several_workers(port, "authenticate", 200)
        assert post_job(port, "echo", {}).status == 202
        refusals, _ = until_several_workers(port, "submit", 429)
        for _ in range(2 * WORKERS):
            assert route_count(port) == answered
            assert refused(port) == refusals

        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (
                victim not in child_pids(api.popen.pid)
                and len(child_pids(api.popen.pid)) == WORKERS
            ),
            timeout=30,
        )
        for _ in range(2 * WORKERS):
            assert route_count(port) == answered
            assert refused(port) == refusals

        more = burst(port, 12, "authenticate")
        assert all(reply.status == 200 for reply in more)
        assert route_count(port) == answered + len(more)


def test_a_restart_starts_from_zero_in_a_reused_directory(
    conn: redis.Redis, env: dict[str, str], tmp_path: Path
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, a new start clears the files an earlier run left."""
    port = free_port()
    env = {**metrics_env(env), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with running(start_api(env, port, workers=2)):
        for _ in range(5):
            assert call(port, "GET", ROUTE).status == 200
        assert route_count(port) == 5
    assert list(tmp_path.glob("*.db")), "the first run wrote no metric files"
    with running(start_api(env, port, workers=2)):
        assert route_count(port) == 0
        assert call(port, "GET", ROUTE).status == 200
        assert route_count(port) == 1
