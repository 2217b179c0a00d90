"""The change feed live, against real gunicorn and two `python -m worker`: a client following
next_cursor with GET while jobs run sees each job's changes in order, none twice, and ends on
each job's final status (docs/changes-feed.md)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from tests.helpers import (
    JOBS_STATUS,
    Process,
    call,
    free_port,
    job_status,
    job_workers,
    running,
    running_tree,
    start_api,
    start_worker,
    submit_ok,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.e2e

JOB_COUNT = 40
PAGE = 5
# Each status a job may be listed with, ranked: a job's listings must climb these strictly.
RANK = {"queued": 0, "running": 1, "done": 2, "failed": 2}


class Follower:
    """A client following next_cursor with GET, then `since` = the last server_time."""

    def __init__(self, port: int, since: float) -> None:
        self.port = port
        self.since = since
        self.cursor: str | None = None
        self.history: dict[str, list[str]] = {}
        self.reads = 0

    def read(self) -> dict[str, Any]:
        """Read the next page and note every job it lists; return the answer's body."""
        params: dict[str, Any] = {"limit": PAGE}
        if self.cursor is not None:
            params["cursor"] = self.cursor
        else:
            params["since"] = repr(self.since)
        reply = call(self.port, "GET", f"{JOBS_STATUS}?{urlencode(params)}")
        assert reply.status == 200, reply.body
        body: dict[str, Any] = reply.body
        assert len(body["response"]) <= PAGE, body
        for job_id, status in body["response"].items():
            self.history.setdefault(job_id, []).append(status)
        self.reads += 1
        self.cursor = body["next_cursor"]
        if self.cursor is None:
            self.since = body["server_time"]
        return body


def submit_stream(port: int) -> dict[str, str]:
    """Submit JOB_COUNT short jobs over HTTP (one in four fails); return each id with the
    status it must end in."""
    expected: dict[str, str] = {}
    for n in range(JOB_COUNT):
        if n % 4 == 3:
            expected[submit_ok(port, "fail", {"message": f"on purpose {n}"})] = "failed"
        else:
            expected[submit_ok(port, "sleep", {"seconds": 0.05})] = "done"
    return expected


def ready(conn: redis.Redis, workers: list[Process]) -> None:
    """Wait until every worker has registered with RQ."""
    for worker in workers:
        wait_for(worker, lambda: len(job_workers(conn)) >= len(workers), timeout=30)


@pytest.mark.timeout(120)
def test_a_client_following_cursors_sees_each_jobs_changes_in_order_once(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """Following next_cursor (pages of 5, GET) while two workers run 40 jobs: each job's
    listings climb queued < running < done/failed with no status twice, each is a status the
    job really had, and the last one listed is its final status."""
    port = free_port()
    workers = [start_worker(env, name=f"worker-{n}") for n in range(2)]
    with running(start_api(env, port, workers=2)), running_tree(*workers):
        ready(conn, workers)
        start = call(port, "GET", f"{JOBS_STATUS}?{urlencode({'since_seconds': 0, 'limit': 1})}")
        assert start.status == 200, start.body
        follower = Follower(port, start.body["server_time"])
        submitted = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as pool:
            stream = pool.submit(submit_stream, port)
            stream.add_done_callback(lambda _: submitted.set())

            def caught_up() -> bool:
                """Read a page; say whether every job has been listed in its final status and
                the feed has reached its server_time since."""
                follower.read()
                if not submitted.is_set() or follower.cursor is not None:
                    return False
                expected = stream.result()
                return all(
                    follower.history.get(job_id, [""])[-1] == final
                    for job_id, final in expected.items()
                )

            wait_until(caught_up, timeout=60, interval=0.02)
            expected = stream.result(timeout=10)
        # Nothing changes any more: one more read lists nothing.
        assert follower.read()["response"] == {}
        finals = {job_id: job_status(port, job_id).body["response"] for job_id in expected}

    assert set(follower.history) == set(expected)
    for job_id, listings in follower.history.items():
        ranks = [RANK[status] for status in listings]
        assert ranks == sorted(set(ranks)), (job_id, listings)
        assert set(listings) <= {"queued", "running", expected[job_id]}, (job_id, listings)
        assert listings[-1] == expected[job_id] == finals[job_id]["job_status"], job_id
    # The follower read while jobs ran: in many pages, and it saw jobs change.
    assert follower.reads > JOB_COUNT // PAGE
    assert any(len(listings) > 1 for listings in follower.history.values())
