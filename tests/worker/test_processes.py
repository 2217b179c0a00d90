"""Transitions made by real `python -m worker` processes: running, progress, kills, stops; and
the webhook delivery worker each runs beside it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from shared import keys
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import (
    ROOT,
    Observed,
    Process,
    Receiver,
    RedisServer,
    alive,
    child_pids,
    descendant_pids,
    describe_job,
    service_env,
    submit,
    wait_for,
    wait_until,
    work_horses,
)
from worker.main import TrackingMixin


def test_running_job_reports_rising_progress_then_done(
    client: FlaskClient,
    conn: redis.Redis,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
) -> None:
    """A job is running while a forking worker runs it, its progress rises, and it ends done."""
    job_id = submit(client, "sleep", {"seconds": 3})
    assert observe(job_id) == (Status.QUEUED, JobStatus.QUEUED)
    proc = worker_process(WORKER_CLASS="fork")

    wait_for(proc, lambda: observe(job_id) == (Status.RUNNING, JobStatus.STARTED))
    seen: list[int] = []

    def progressed() -> bool:
        progress = Job.fetch(job_id, connection=conn).get_meta().get("progress", 0)
        if not seen or progress != seen[-1]:
            seen.append(progress)
        return len([p for p in seen if 0 < p < 100]) >= 2

    wait_for(proc, progressed)
    running = describe_job(client, job_id)
    assert running["job_status"] == "running"
    assert isinstance(running["progress"], int) and 0 < running["progress"] <= 100

    wait_for(proc, lambda: describe_job(client, job_id)["job_status"] == "done")
    done = describe_job(client, job_id)
    assert done["progress"] == 100
    assert done["result"] == {"slept": 3.0}
    assert observe(job_id) == (Status.DONE, JobStatus.FINISHED)
    assert Job.fetch(job_id, connection=conn).get_meta()["progress"] == 100
    assert seen == sorted(seen), f"progress went down: {seen}"


def test_killed_work_horse_fails_the_job(
    queue: Queue,
    conn: redis.Redis,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
) -> None:
    """A job whose forked work-horse is SIGKILLed ends failed in the index and in RQ."""
    job = queue.enqueue(RUNNER, "sleep", {"seconds": 60})
    proc = worker_process(WORKER_CLASS="fork")
    wait_for(proc, lambda: observe(job.id) == (Status.RUNNING, JobStatus.STARTED))
    horses = wait_for(proc, lambda: work_horses(proc.popen.pid))
    assert isinstance(horses, list) and len(horses) == 1
    os.kill(horses[0], signal.SIGKILL)

    wait_for(proc, lambda: observe(job.id) == (Status.FAILED, JobStatus.FAILED))
    result = Job.fetch(job.id, connection=conn).latest_result()
    assert result is not None
    assert "Work-horse terminated unexpectedly" in str(result.exc_string)


def test_stopped_job_is_canceled(
    queue: Queue,
    conn: redis.Redis,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
) -> None:
    """A running job stopped with RQ's stop-job command is canceled in the index, stopped in RQ."""
    job = queue.enqueue(RUNNER, "sleep", {"seconds": 60})
    proc = worker_process(WORKER_CLASS="fork")
    wait_for(proc, lambda: observe(job.id) == (Status.RUNNING, JobStatus.STARTED))
    # The worker subscribes to its command channel after it starts; a command sent before
    # that is lost, so resend until the job leaves `running`.
    stopped = (Status.CANCELED, JobStatus.STOPPED)

    def stop() -> bool:
        if observe(job.id) != stopped:
            send_stop_job_command(conn, job.id)
        return observe(job.id) == stopped

    wait_for(proc, stop)
    assert proc.popen.poll() is None, "the worker itself must survive a stopped job"


def test_job_of_killed_worker_fails_on_cleanup_and_others_run(
    queue: Queue,
    conn: redis.Redis,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
    run_worker: Callable[..., TrackingMixin],
) -> None:
    """A job whose worker was SIGKILLed fails at the next maintenance; other jobs are unaffected."""
    before = queue.enqueue(RUNNER, "echo", {"n": 1})
    run_worker()
    victim = queue.enqueue(RUNNER, "sleep", {"seconds": 60})
    proc = worker_process(WORKER_CLASS="simple")
    wait_for(proc, lambda: observe(victim.id) == (Status.RUNNING, JobStatus.STARTED))
    after = queue.enqueue(RUNNER, "echo", {"n": 2})

    # The whole worker dies at once, as in a crash: its process group and any child it has.
    strays = child_pids(proc.popen.pid)
    os.killpg(proc.popen.pid, signal.SIGKILL)
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    # Nothing notices a dead worker until its job's heartbeat expires: the job stays running.
    assert observe(victim.id) == (Status.RUNNING, JobStatus.STARTED)
    assert observe(after.id) == (Status.QUEUED, JobStatus.QUEUED)

    # Expire the heartbeat instead of waiting minutes for it, then let a live worker's
    # maintenance (run first thing by any worker) find the job abandoned.
    started = StartedJobRegistry(queue=queue)
    for member in conn.zrange(started.key, 0, -1):
        conn.zadd(started.key, {member: 1})
    run_worker()

    assert observe(victim.id) == (Status.FAILED, JobStatus.FAILED)
    result = Job.fetch(victim.id, connection=conn).latest_result()
    assert result is not None and "AbandonedJobError" in str(result.exc_string)
    assert observe(before.id) == (Status.DONE, JobStatus.FINISHED)
    assert observe(after.id) == (Status.DONE, JobStatus.FINISHED)


def test_simple_worker_runs_jobs_in_its_own_process(
    queue: Queue,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
) -> None:
    """WORKER_CLASS=simple runs a job inside the worker process, forking no work-horse."""
    job = queue.enqueue(RUNNER, "sleep", {"seconds": 60})
    proc = worker_process(WORKER_CLASS="simple")
    wait_for(proc, lambda: observe(job.id) == (Status.RUNNING, JobStatus.STARTED))
    assert work_horses(proc.popen.pid) == []
    assert child_pids(proc.popen.pid), "the scheduler and the repair loop run beside it"


def test_worker_process_runs_tasks_from_task_modules(
    make_app: Callable[..., Flask],
    conn: redis.Redis,
    observe: Callable[[str], Observed],
    worker_process: Callable[..., Process],
) -> None:
    """A worker started with TASK_MODULES runs a user task the API accepted, to done."""
    client = make_app(task_modules=("tests.sample_tasks",)).test_client()
    job_id = submit(client, "reverse", {"text": "abc"})
    proc = worker_process(TASK_MODULES="tests.sample_tasks")
    wait_for(proc, lambda: observe(job_id) == (Status.DONE, JobStatus.FINISHED))
    assert Job.fetch(job_id, connection=conn).return_value() == {"text": "cba"}


def test_worker_refuses_bad_configuration(redis_server: RedisServer) -> None:
    """`python -m worker` with MAX_QUEUE_LENGTH=abc exits non-zero, naming the variable."""
    done = subprocess.run(
        [sys.executable, "-m", "worker"],
        env=service_env(redis_server.url, MAX_QUEUE_LENGTH="abc"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "MAX_QUEUE_LENGTH" in done.stderr


# --- the webhook delivery worker -------------------------------------------------------------

HOOKS = keys.webhook_queue_name("default")


def registered_pair(conn: redis.Redis) -> dict[tuple[str, ...], Worker] | None:
    """Return the registered RQ workers by the queues they serve, once there are two."""
    workers = Worker.all(connection=conn)
    if len(workers) != 2:
        return None
    return {tuple(worker.queue_names()): worker for worker in workers}


def start_pair(
    conn: redis.Redis, worker_process: Callable[..., Process], **env: str
) -> tuple[Process, Worker, Worker]:
    """Start `python -m worker`; return it, its RQ worker and its delivery worker, once both
    are registered."""
    proc = worker_process(**env)
    pair = wait_for(proc, lambda: registered_pair(conn), timeout=60)
    assert isinstance(pair, dict)
    assert sorted(pair) == [("default",), (HOOKS,)], sorted(pair)
    return proc, pair[("default",)], pair[(HOOKS,)]


def test_deliveries_run_in_a_worker_of_their_own(
    make_app: Callable[..., Flask],
    conn: redis.Redis,
    worker_process: Callable[..., Process],
) -> None:
    """`python -m worker` registers two RQ workers, never one serving both queues: itself on
    "default" only, and a child of its own on "default:webhooks" only, which runs the
    deliveries while it runs the jobs."""
    client = make_app(webhook_allow_private=True).test_client()
    with Receiver() as receiver:
        job_id = submit(client, "echo", {"n": 1}, webhook_url=receiver.url)
        proc, main, deliverer = start_pair(conn, worker_process, WEBHOOK_ALLOW_PRIVATE="true")
        assert main.pid == proc.popen.pid
        assert deliverer.pid in child_pids(proc.popen.pid)
        wait_for(proc, lambda: receiver.hits, timeout=60)
    assert Job.fetch(job_id, connection=conn).worker_name == main.name
    delivery = conn.hget(keys.delivery_state_key(job_id), "delivery")
    assert delivery is not None
    assert Job.fetch(delivery.decode(), connection=conn).worker_name == deliverer.name
    pair = registered_pair(conn)
    assert pair is not None and sorted(pair) == [("default",), (HOOKS,)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_process_group_ends_both_workers(
    conn: redis.Redis, worker_process: Callable[..., Process], signum: int
) -> None:
    """A signal to the worker's whole process group (SIGTERM: a warm shutdown; SIGKILL) ends
    the worker, its delivery worker and every child of theirs."""
    proc, _, deliverer = start_pair(conn, worker_process)
    tree = descendant_pids(proc.popen.pid)
    assert deliverer.pid in tree
    os.killpg(proc.popen.pid, signum)
    proc.popen.wait(timeout=60)
    wait_until(lambda: not any(map(alive, tree)), timeout=60)
    if signum == signal.SIGTERM:
        # Warm shutdowns: each said it was gone.
        assert Worker.all(connection=conn) == []


def test_the_delivery_worker_stops_when_its_parent_is_killed(
    conn: redis.Redis, worker_process: Callable[..., Process]
) -> None:
    """SIGKILL of the worker alone (not its group) makes its delivery worker stop by itself,
    warmly, at its next maintenance: an idle RQ worker wakes from its blocking dequeue every
    WORKER_TTL - 15 = 20 s, so within about 21 s even with MAINTENANCE_INTERVAL=1 (measured:
    19.5 s)."""
    proc, _, deliverer = start_pair(conn, worker_process)
    own = [deliverer.pid, *descendant_pids(deliverer.pid)]
    try:
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        wait_until(lambda: not any(map(alive, own)), timeout=45, interval=0.2)
        assert deliverer.name not in {w.name for w in Worker.all(connection=conn)}
        assert f"its parent {proc.popen.pid} is gone; stopping" in proc.output()
    finally:
        # What the killed worker leaves behind (RQ's scheduler it forked does not notice).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
