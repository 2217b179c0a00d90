"""Two API processes and two workers sharing one Redis: every job runs exactly once."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry

from shared import keys
from shared.status import Status
from tests.helpers import (
    WORKERS_PER_PROCESS,
    free_port,
    job_workers,
    jobs_status,
    running,
    start_api,
    start_worker,
    submit_ok,
    wait_until,
)

pytestmark = pytest.mark.e2e

JOBS = 40
JOB_OK = re.compile(r"Worker (\w+): \S+: Job OK \(([\w-]+)\)")


def test_two_apis_and_two_workers_run_every_job_exactly_once(
    conn: redis.Redis, env: dict[str, str]
) -> None:
    """40 jobs through two APIs run exactly once each, on both workers; both APIs agree."""
    ports = [free_port(), free_port()]
    workers = [start_worker(env, name="worker-a"), start_worker(env, name="worker-b")]
    with (
        running(*workers),
        running(api_a := start_api(env, ports[0])),
        running(api_b := start_api(env, ports[1])),
    ):
        # Both workers wait in BLPOP before the first submission. Redis hands pushed jobs to
        # blocked clients first come, first served, so while one worker runs the first job the
        # other, still blocked, must receive the second: both take part, whatever the timing.
        blocked = WORKERS_PER_PROCESS * 2
        wait_until(lambda: conn.info("clients")["blocked_clients"] == blocked, timeout=30)
        with ThreadPoolExecutor(max_workers=10) as pool:
            ids = list(pool.map(lambda i: submit_ok(ports[i % 2], "echo", {"n": i}), range(JOBS)))
        assert len(set(ids)) == JOBS

        expected = dict.fromkeys(ids, "done")

        def all_done() -> bool:
            listing = jobs_status(ports[0])
            assert listing.status == 200, listing.body
            return bool(listing.body["response"] == expected)

        wait_until(all_done, timeout=60, interval=0.2)
        listings = [jobs_status(port) for port in ports]
        assert [listing.status for listing in listings] == [200, 200]
        assert listings[0].body["response"] == listings[1].body["response"] == expected

        # Read the worker stats while both workers are still registered.
        registered = job_workers(conn)
        assert len(registered) == 2
        assert [w.failed_job_count for w in registered] == [0, 0]
        stats = {w.name: w.successful_job_count for w in registered}

    for i, job in enumerate(Job.fetch_many(ids, connection=conn)):
        assert job is not None
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value() == {"n": i}
    finished = FinishedJobRegistry("default", connection=conn)
    assert sorted(finished.get_job_ids()) == sorted(ids)
    done = {member.decode() for member in conn.zrange(keys.status_index_key(Status.DONE), 0, -1)}
    assert done == set(ids)
    for status in Status:
        if status is not Status.DONE:
            assert conn.zcard(keys.status_index_key(status)) == 0, status

    # Each job is reported "Job OK" exactly once, by one of the two worker processes; each
    # process ran at least one (the exact split is up to timing) and agrees with its RQ stats.
    ok_lines = [JOB_OK.findall(worker.output()) for worker in workers]
    assert sorted(job_id for lines in ok_lines for _, job_id in lines) == sorted(ids)
    ran_per_worker: dict[str, int] = {}
    for lines in ok_lines:
        names = {name for name, _ in lines}
        assert len(names) == 1, names
        ran_per_worker.update({name: len(lines) for name in names})
    assert len(ran_per_worker) == 2, ran_per_worker
    assert stats == ran_per_worker
    assert sum(stats.values()) == JOBS
    # Two gunicorn instances on one host: neither opens gunicorn's fixed per-user control
    # socket, which they would otherwise take from each other.
    for api in (api_a, api_b):
        assert "Control socket" not in api.output()
