"""Scale out: 4 workers and 2 APIs of several gunicorn workers each, 1,000 concurrent jobs."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry

from shared import keys
from shared.index import parse_transitions
from shared.status import Status, from_rq
from tests.e2e.counting_tasks import RUNS_KEY
from tests.helpers import (
    free_port,
    job_workers,
    jobs_status,
    post_job,
    running,
    start_api,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e

JOBS = 1000
WORKERS = 4
API_WORKERS = 3
SUBMITTERS = 32
JOB_OK = re.compile(r"Worker (\w+): \S+: Job OK \(([\w-]+)\)")
GUNICORN_WORKER = re.compile(r"Booting worker with pid: (\d+)")


@pytest.mark.timeout(600)
def test_four_workers_and_two_apis_run_a_thousand_jobs_exactly_once(
    conn: redis.Redis, env: dict[str, str]
) -> None:
    """1,000 jobs sent at once through both APIs run once each; index and RQ agree on all."""
    env = {**env, "TASK_MODULES": "tests.e2e.counting_tasks", "MAINTENANCE_INTERVAL": "15"}
    ports = [free_port(), free_port()]
    workers = [start_worker(env, name=f"scale-worker-{i}") for i in range(WORKERS)]
    with (
        running(*workers),
        running(api_a := start_api(env, ports[0], workers=API_WORKERS)),
        running(api_b := start_api(env, ports[1], workers=API_WORKERS)),
    ):
        wait_until(lambda: len(job_workers(conn)) == WORKERS, timeout=30)
        with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
            replies = list(
                pool.map(lambda i: post_job(ports[i % 2], "count", {"n": i}), range(JOBS))
            )
        assert [reply.status for reply in replies] == [202] * JOBS
        ids = [reply.body["job_id"] for reply in replies]
        assert len(set(ids)) == JOBS

        done_key = keys.status_index_key(Status.DONE)
        wait_until(lambda: conn.zcard(done_key) == JOBS, timeout=300, interval=0.5)
        expected = dict.fromkeys(ids, "done")
        for port in ports:
            listing = jobs_status(port)
            assert listing.status == 200, listing.body
            assert listing.body["response"] == expected
        registered = job_workers(conn)
        stats = {w.name: (w.successful_job_count, w.failed_job_count) for w in registered}
        # Several gunicorn workers of each API answered submissions (the envelope's pid).
        for i, api in enumerate((api_a, api_b)):
            booted = {int(pid) for pid in GUNICORN_WORKER.findall(api.output())}
            assert len(booted) == API_WORKERS
            answered = {reply.body["pid"] for reply in replies[i::2]}
            assert answered <= booted
            assert len(answered) >= 2, answered

    # Exactly once: each job's own counter, RQ's "Job OK" lines and the workers' stats.
    runs = {job_id.decode(): int(n) for job_id, n in conn.hgetall(RUNS_KEY).items()}
    assert runs == dict.fromkeys(ids, 1)
    ok = [job_id for worker in workers for _, job_id in JOB_OK.findall(worker.output())]
    assert sorted(ok) == sorted(ids)
    assert len(stats) == WORKERS
    assert sum(ok for ok, _ in stats.values()) == JOBS
    assert all(failed == 0 for _, failed in stats.values())
    # All four share the work: each waits in BLPOP, and Redis serves blocked clients in turn.
    assert all(ok > 0 for ok, _ in stats.values()), stats

    # The index holds exactly 1,000 done entries and nothing else, and RQ agrees on each job.
    assert conn.zcard(keys.status_index_key(Status.DONE)) == JOBS
    for status in Status:
        if status is not Status.DONE:
            assert conn.zcard(keys.status_index_key(status)) == 0, status
    jobs = Job.fetch_many(ids, connection=conn)
    for i, (job_id, job) in enumerate(zip(ids, jobs, strict=True)):
        assert job is not None, job_id
        assert job.get_status() == JobStatus.FINISHED
        assert from_rq(job.get_status()) is Status.DONE
        assert job.return_value() == {"n": i}
    assert sorted(FinishedJobRegistry("default", connection=conn).get_job_ids()) == sorted(ids)
    # Every change was counted once, atomically with its index move, under full concurrency.
    assert parse_transitions(conn.hgetall(keys.transitions_key())) == {
        ("new", "queued"): JOBS,
        ("queued", "running"): JOBS,
        ("running", "done"): JOBS,
    }
