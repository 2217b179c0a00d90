"""What RQ's own tools do to a job, and the index agreeing with RQ after each (issue 10).

Each operation is done three ways where RQ offers them: with RQ's plain classes or plain `rq`
command (the index drifts, and one repair pass puts it right), with the `rq` command naming the
service's classes, and with the service's classes in Python (both right at once, no repair).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import Callable

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from shared import keys
from shared.index import StatusIndex, parse_transitions
from shared.job import TrackedJob
from shared.queue import TrackedQueue
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import (
    JOB_STATUS,
    JOBS_STATUS,
    Observed,
    Process,
    RedisServer,
    assert_envelope,
    child_pids,
    index_view,
    post,
    rq_view,
    run_rq,
    submit,
    wait_for,
)
from tests.worker.rq_tools_tasks import RUNS_KEY
from worker import repair
from worker.main import TrackingMixin

TOOLS_TASKS = "tests.worker.rq_tools_tasks"
# The `rq` command's options naming the service's classes.
TRACKED_JOB = ("-j", "shared.job.TrackedJob")
TRACKED_QUEUE = ("--queue-class", "shared.queue.TrackedQueue")
TRACKED_WORKER = ("-w", "worker.main.TrackedWorker")


# --- helpers ---------------------------------------------------------------------------------


def rq(redis_server: RedisServer, command: str, *args: str) -> str:
    """Run RQ's own `rq <command>` against the test Redis, assert it succeeds, return its output."""
    return run_rq(
        redis_server, [command, "--url", redis_server.url, *args], TASK_MODULES=TOOLS_TASKS
    )


def transitions(conn: redis.Redis) -> dict[tuple[str, str], int]:
    """Return the transition counts of the index."""
    return parse_transitions(conn.hgetall(keys.transitions_key()))


def repaired(conn: redis.Redis, index: StatusIndex) -> dict[str, Status]:
    """Apply the repair bound (one pass); assert the index then equals RQ's view, and stays so."""
    repair.repair_pass(index)
    view = index_view(conn)
    assert view == rq_view(conn)
    assert repair.repair_pass(index).changed == 0
    return view


def hold_repair_lease(conn: redis.Redis) -> None:
    """Keep every worker's own repairer idle, so that only the test decides when repairs run."""
    conn.set(keys.repair_lease_key(), "test", ex=600)


def listed(client: FlaskClient) -> dict[str, str]:
    """Return what the API lists: {job_id: status} of POST /v1/toolkit/jobs/status."""
    body = assert_envelope(post(client, JOBS_STATUS, {"since_seconds": 600}), 200)
    response: dict[str, str] = body["response"]
    return response


def assert_not_found(client: FlaskClient, job_id: str) -> None:
    """Assert the single-job API answers 404 for `job_id`."""
    assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}), 404)


def jobs_worked(conn: redis.Redis) -> int:
    """Return how many jobs RQ's registered workers have ended, successfully or not."""
    return sum(
        worker.successful_job_count + worker.failed_job_count
        for worker in Worker.all(connection=conn)
    )


def kill_worker(proc: Process) -> None:
    """SIGKILL a `python -m worker` and all it started (its scheduler and its repairer)."""
    strays = child_pids(proc.popen.pid)
    os.killpg(proc.popen.pid, signal.SIGKILL)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)


# --- 1. cancel -------------------------------------------------------------------------------


def test_plain_cancel_of_a_queued_job_is_repaired(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue
) -> None:
    """RQ's plain cancel leaves a queued job queued in the index; one repair makes it canceled."""
    job = queue.enqueue_task("echo", {})
    Job.fetch(job.id, connection=conn).cancel()
    assert rq_view(conn) == {job.id: Status.CANCELED}
    assert index_view(conn) == {job.id: Status.QUEUED}
    assert repaired(conn, index) == {job.id: Status.CANCELED}


def test_tracked_cancel_of_a_queued_job_is_indexed_at_once(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """TrackedJob.cancel() moves a queued job to canceled in the index as in RQ, no repair."""
    job = queue.enqueue_task("echo", {})
    TrackedJob.fetch(job.id, connection=conn).cancel()
    assert index_view(conn) == rq_view(conn) == {job.id: Status.CANCELED}
    assert transitions(conn)[("queued", "canceled")] == 1


@pytest.mark.parametrize("job_class", [Job, TrackedJob], ids=["plain", "tracked"])
def test_cancel_of_a_running_job_ends_with_the_index_agreeing(
    conn: redis.Redis,
    index: StatusIndex,
    queue: TrackedQueue,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
    job_class: type[Job],
) -> None:
    """Canceling a running job: plain drifts till repaired, tracked is right; the end agrees too."""
    hold_repair_lease(conn)
    job = queue.enqueue_task("sleep", {"seconds": 3})
    proc = worker_process(WORKER_CLASS="simple")
    wait_for(proc, lambda: observe(job.id) == (Status.RUNNING, JobStatus.STARTED))

    job_class.fetch(job.id, connection=conn).cancel()
    assert rq_view(conn) == {job.id: Status.CANCELED}
    if job_class is TrackedJob:
        assert index_view(conn) == {job.id: Status.CANCELED}
    else:
        assert index_view(conn) == {job.id: Status.RUNNING}
        assert repaired(conn, index) == {job.id: Status.CANCELED}

    wait_for(proc, lambda: jobs_worked(conn) == 1)
    final = rq_view(conn)
    assert index_view(conn) == final
    assert final[job.id] is not Status.RUNNING


# --- 2. delete and empty ---------------------------------------------------------------------


def make_job(queue: TrackedQueue, state: str, run_worker: Callable[..., TrackingMixin]) -> Job:
    """Return an echo job left `state` ("queued" or "finished") by the service's own classes."""
    job = queue.enqueue_task("echo", {})
    if state == "finished":
        run_worker()
    return job


@pytest.mark.parametrize(("state", "indexed_as"), [("queued", "queued"), ("finished", "done")])
def test_plain_delete_is_repaired(
    conn: redis.Redis,
    index: StatusIndex,
    queue: TrackedQueue,
    client: FlaskClient,
    run_worker: Callable[..., TrackingMixin],
    state: str,
    indexed_as: str,
) -> None:
    """RQ's plain delete leaves the job listed though the API 404s it, until one repair."""
    job = make_job(queue, state, run_worker)
    Job.fetch(job.id, connection=conn).delete()
    assert rq_view(conn) == {}
    assert index_view(conn) == {job.id: Status(indexed_as)}
    assert listed(client) == {job.id: indexed_as}
    assert_not_found(client, job.id)
    assert repaired(conn, index) == {}
    assert listed(client) == {}


@pytest.mark.parametrize("state", ["queued", "finished"])
def test_tracked_delete_leaves_the_index_at_once(
    conn: redis.Redis,
    queue: TrackedQueue,
    client: FlaskClient,
    run_worker: Callable[..., TrackingMixin],
    state: str,
) -> None:
    """TrackedJob.delete() removes the job from RQ and the index together: 404 and not listed."""
    job = make_job(queue, state, run_worker)
    TrackedJob.fetch(job.id, connection=conn).delete()
    assert index_view(conn) == rq_view(conn) == {}
    assert_not_found(client, job.id)
    assert listed(client) == {}


def test_tracked_delete_with_dependents_leaves_the_index_at_once(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """TrackedJob.delete(delete_dependents=True) takes the dependents out of the index too."""
    parent = queue.enqueue_task("echo", {})
    child = queue.enqueue_task("echo", {}, depends_on=parent)
    assert index_view(conn) == rq_view(conn) == {parent.id: Status.QUEUED, child.id: Status.QUEUED}
    TrackedJob.fetch(parent.id, connection=conn).delete(delete_dependents=True)
    assert rq_view(conn) == {}
    assert index_view(conn) == {}


def fill_queue(
    queue: TrackedQueue, run_worker: Callable[..., TrackingMixin]
) -> tuple[str, list[str]]:
    """Return one finished job's id and the ids of three jobs left waiting behind it."""
    done = queue.enqueue_task("echo", {})
    run_worker()
    waiting = [queue.enqueue_task("echo", {"n": n}).id for n in range(3)]
    return done.id, waiting


EMPTY_PLAIN: dict[str, Callable[[redis.Redis, RedisServer], object]] = {
    "Queue.empty": lambda conn, server: Queue("default", connection=conn).empty(),
    "rq empty": lambda conn, server: rq(server, "empty", "default"),
}
EMPTY_TRACKED: dict[str, Callable[[redis.Redis, RedisServer], object]] = {
    "TrackedQueue.empty": lambda conn, server: TrackedQueue("default", connection=conn).empty(),
    "rq empty --queue-class": lambda conn, server: rq(server, "empty", *TRACKED_QUEUE, "default"),
}


@pytest.mark.parametrize("how", EMPTY_PLAIN)
def test_plain_empty_is_repaired(
    conn: redis.Redis,
    index: StatusIndex,
    queue: TrackedQueue,
    client: FlaskClient,
    redis_server: RedisServer,
    run_worker: Callable[..., TrackingMixin],
    how: str,
) -> None:
    """RQ's plain empty (Queue.empty or `rq empty`) leaves waiting jobs queued until one repair."""
    done, waiting = fill_queue(queue, run_worker)
    EMPTY_PLAIN[how](conn, redis_server)
    assert rq_view(conn) == {done: Status.DONE}
    assert index_view(conn) == {done: Status.DONE, **dict.fromkeys(waiting, Status.QUEUED)}
    assert repaired(conn, index) == {done: Status.DONE}
    for job_id in waiting:
        assert_not_found(client, job_id)
    assert listed(client) == {done: "done"}


@pytest.mark.parametrize("how", EMPTY_TRACKED)
def test_tracked_empty_empties_the_index_at_once(
    conn: redis.Redis,
    queue: TrackedQueue,
    client: FlaskClient,
    redis_server: RedisServer,
    run_worker: Callable[..., TrackingMixin],
    how: str,
) -> None:
    """TrackedQueue.empty(), in Python or by `rq empty --queue-class`, empties the index too."""
    done, waiting = fill_queue(queue, run_worker)
    EMPTY_TRACKED[how](conn, redis_server)
    assert index_view(conn) == rq_view(conn) == {done: Status.DONE}
    for job_id in waiting:
        assert_not_found(client, job_id)
    assert listed(client) == {done: "done"}


# --- 3. requeue ------------------------------------------------------------------------------


def failed_job(queue: TrackedQueue, run_worker: Callable[..., TrackingMixin]) -> str:
    """Return the id of a `fail` job the service's worker has run to failed."""
    job = queue.enqueue_task("fail", {"message": "again"})
    run_worker()
    return job.id


@pytest.mark.parametrize("how", ["rq requeue --all", "Job.requeue"])
def test_plain_requeue_is_repaired(
    conn: redis.Redis,
    index: StatusIndex,
    queue: TrackedQueue,
    redis_server: RedisServer,
    run_worker: Callable[..., TrackingMixin],
    how: str,
) -> None:
    """RQ's plain requeue leaves the job failed in the index until one repair makes it queued."""
    job_id = failed_job(queue, run_worker)
    if how == "Job.requeue":
        Job.fetch(job_id, connection=conn).requeue()
    else:
        rq(redis_server, "requeue", "--all", "--queue", "default")
    assert rq_view(conn) == {job_id: Status.QUEUED}
    assert index_view(conn) == {job_id: Status.FAILED}
    assert repaired(conn, index) == {job_id: Status.QUEUED}
    run_worker()
    assert index_view(conn) == rq_view(conn) == {job_id: Status.FAILED}
    assert transitions(conn)[("queued", "running")] == 2


@pytest.mark.parametrize("how", ["rq requeue --all -j", "TrackedJob.requeue"])
def test_tracked_requeue_is_indexed_at_once(
    conn: redis.Redis,
    queue: TrackedQueue,
    redis_server: RedisServer,
    run_worker: Callable[..., TrackingMixin],
    how: str,
) -> None:
    """A TrackedJob requeue (`rq requeue -j` or Python) is indexed at once; its rerun is counted."""
    job_id = failed_job(queue, run_worker)
    if how == "TrackedJob.requeue":
        TrackedJob.fetch(job_id, connection=conn).requeue()
    else:
        rq(redis_server, "requeue", *TRACKED_JOB, "--all", "--queue", "default")
    assert index_view(conn) == rq_view(conn) == {job_id: Status.QUEUED}
    assert transitions(conn)[("failed", "queued")] == 1
    run_worker()
    assert index_view(conn) == rq_view(conn) == {job_id: Status.FAILED}
    assert transitions(conn) == {
        ("new", "queued"): 1,
        ("queued", "running"): 2,
        ("running", "failed"): 2,
        ("failed", "queued"): 1,
    }


# --- 4. enqueue ------------------------------------------------------------------------------

CLI_JOB_ID = "enqueued-by-rq-cli"


def rq_enqueue(redis_server: RedisServer, *classes: str) -> str:
    """Enqueue an echo job with `rq enqueue` (naming `classes`, if any); return its id."""
    rq(redis_server, "enqueue", *classes, "--job-id", CLI_JOB_ID, RUNNER, "echo", ":{}")
    return CLI_JOB_ID


ENQUEUE_PLAIN: dict[str, Callable[[redis.Redis, RedisServer], str]] = {
    "Queue.enqueue": lambda conn, server: (
        Queue("default", connection=conn).enqueue(RUNNER, "echo", {}).id
    ),
    "rq enqueue": lambda conn, server: rq_enqueue(server),
}
ENQUEUE_TRACKED: dict[str, Callable[[redis.Redis, RedisServer], str]] = {
    "TrackedQueue.enqueue_task": lambda conn, server: (
        TrackedQueue("default", connection=conn).enqueue_task("echo", {}).id
    ),
    "rq enqueue --queue-class": lambda conn, server: rq_enqueue(server, *TRACKED_QUEUE),
}


@pytest.mark.parametrize("how", ENQUEUE_PLAIN)
def test_plain_enqueue_is_listed_once_repaired(
    conn: redis.Redis,
    index: StatusIndex,
    client: FlaskClient,
    redis_server: RedisServer,
    how: str,
) -> None:
    """A plain enqueue (Queue.enqueue or `rq enqueue`) is unlisted until one repair adds it."""
    job_id = ENQUEUE_PLAIN[how](conn, redis_server)
    assert rq_view(conn) == {job_id: Status.QUEUED}
    assert index_view(conn) == {}
    assert listed(client) == {}
    assert repaired(conn, index) == {job_id: Status.QUEUED}
    assert listed(client) == {job_id: "queued"}


@pytest.mark.parametrize("how", ENQUEUE_TRACKED)
def test_tracked_enqueue_is_listed_at_once(
    conn: redis.Redis, client: FlaskClient, redis_server: RedisServer, how: str
) -> None:
    """A tracked enqueue (enqueue_task or `rq enqueue --queue-class`) is listed queued at once."""
    job_id = ENQUEUE_TRACKED[how](conn, redis_server)
    assert index_view(conn) == rq_view(conn) == {job_id: Status.QUEUED}
    assert listed(client) == {job_id: "queued"}
    assert transitions(conn) == {("new", "queued"): 1}


# --- 5. scheduled jobs and retries -----------------------------------------------------------

SOON = dt.timedelta(seconds=1)
SCHEDULES: dict[str, Callable[[Queue], Job]] = {
    "enqueue_in": lambda q: q.enqueue_in(SOON, RUNNER, "echo", {}),
    "enqueue_at": lambda q: q.enqueue_at(dt.datetime.now(dt.UTC) + SOON, RUNNER, "echo", {}),
    "retry": lambda q: q.enqueue(RUNNER, "flaky", {}, retry=Retry(max=1, interval=1)),
}


@pytest.mark.parametrize("how", SCHEDULES)
def test_scheduled_jobs_end_done_through_rqs_scheduler(
    conn: redis.Redis,
    queue: TrackedQueue,
    worker_process: Callable[..., Process],
    how: str,
) -> None:
    """Scheduled and retried jobs, tracked or plain, run via RQ's scheduler to done, no repair."""
    hold_repair_lease(conn)
    tracked = SCHEDULES[how](queue)
    plain = SCHEDULES[how](Queue("default", connection=conn))
    # The tracked queue's job is listed at once (scheduled counts as queued); the plain one not.
    assert index_view(conn) == {tracked.id: Status.QUEUED}
    proc = worker_process(WORKER_CLASS="simple", TASK_MODULES=TOOLS_TASKS)

    both_done = {tracked.id: Status.DONE, plain.id: Status.DONE}
    wait_for(proc, lambda: rq_view(conn) == both_done, timeout=30)
    assert index_view(conn) == both_done
    if how == "retry":
        assert conn.hgetall(RUNS_KEY) == {tracked.id.encode(): b"2", plain.id.encode(): b"2"}
        assert transitions(conn)[("running", "queued")] == 2
        assert ("running", "failed") not in transitions(conn)


# --- 6. result_ttl=0 -------------------------------------------------------------------------


def test_result_ttl_zero_leaves_the_index_with_the_tracked_worker(
    conn: redis.Redis, queue: TrackedQueue, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A result_ttl=0 job leaves RQ and the index together under the service's worker."""
    job = queue.enqueue_task("echo", {}, result_ttl=0)
    assert index_view(conn) == {job.id: Status.QUEUED}
    run_worker()
    assert index_view(conn) == rq_view(conn) == {}
    assert transitions(conn)[("queued", "running")] == 1


def test_result_ttl_zero_with_rqs_cli_and_the_tracked_worker_class(
    conn: redis.Redis, queue: TrackedQueue, redis_server: RedisServer
) -> None:
    """`rq worker -w worker.main.TrackedWorker` removes a result_ttl=0 job from the index too."""
    job = queue.enqueue_task("echo", {}, result_ttl=0)
    assert index_view(conn) == {job.id: Status.QUEUED}
    rq(redis_server, "worker", *TRACKED_WORKER, "--burst", "default")
    assert index_view(conn) == rq_view(conn) == {}
    assert transitions(conn)[("queued", "running")] == 1


def test_result_ttl_zero_with_a_plain_rq_worker_is_repaired(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue, redis_server: RedisServer
) -> None:
    """RQ's plain `rq worker` leaves a deleted result_ttl=0 job queued until one repair."""
    job = queue.enqueue_task("echo", {}, result_ttl=0)
    rq(redis_server, "worker", "--burst", "default")
    assert rq_view(conn) == {}
    assert index_view(conn) == {job.id: Status.QUEUED}
    assert repaired(conn, index) == {}


# --- 7. RQ's own worker command with the service's classes -----------------------------------


@pytest.mark.parametrize(
    "classes",
    [(*TRACKED_WORKER, *TRACKED_JOB, *TRACKED_QUEUE), TRACKED_WORKER],
    ids=["worker-job-queue", "worker-only"],
)
def test_rq_worker_with_the_tracked_worker_records_every_transition(
    conn: redis.Redis, client: FlaskClient, redis_server: RedisServer, classes: tuple[str, ...]
) -> None:
    """`rq worker -w TrackedWorker`, with or without -j/--queue-class, records every transition."""
    done = submit(client, "echo", {"n": 7})
    failed = submit(client, "fail", {"message": "on purpose"})
    rq(redis_server, "worker", *classes, "--burst", "default")
    expected = {done: Status.DONE, failed: Status.FAILED}
    assert index_view(conn) == rq_view(conn) == expected
    assert listed(client) == {done: "done", failed: "failed"}
    assert transitions(conn) == {
        ("new", "queued"): 2,
        ("queued", "running"): 2,
        ("running", "done"): 1,
        ("running", "failed"): 1,
    }


# --- 8. a worker killed outright, then RQ's started-registry cleanup -------------------------


@pytest.mark.parametrize("job_class", [Job, TrackedJob], ids=["plain", "tracked"])
def test_cleanup_of_a_killed_workers_job(
    conn: redis.Redis,
    index: StatusIndex,
    queue: TrackedQueue,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
    job_class: type[Job],
) -> None:
    """A killed worker's job failed by cleanup(): plain drifts until repaired, tracked at once."""
    hold_repair_lease(conn)
    job = queue.enqueue_task("sleep", {"seconds": 60})
    proc = worker_process(WORKER_CLASS="simple")
    wait_for(proc, lambda: observe(job.id) == (Status.RUNNING, JobStatus.STARTED))
    kill_worker(proc)
    assert index_view(conn) == rq_view(conn) == {job.id: Status.RUNNING}

    # Expire the heartbeat instead of waiting for it.
    registry = StartedJobRegistry("default", connection=conn, job_class=job_class)
    for member in conn.zrange(registry.key, 0, -1):
        conn.zadd(registry.key, {member: 1})
    registry.cleanup()

    assert rq_view(conn) == {job.id: Status.FAILED}
    if job_class is TrackedJob:
        assert index_view(conn) == {job.id: Status.FAILED}
        assert transitions(conn)[("running", "failed")] == 1
    else:
        assert index_view(conn) == {job.id: Status.RUNNING}
        assert repaired(conn, index) == {job.id: Status.FAILED}
