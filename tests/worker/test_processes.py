"""Transitions made by real `python -m worker` processes: running, progress, kills, stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import (
    ROOT,
    Observed,
    Process,
    RedisServer,
    child_pids,
    describe_job,
    service_env,
    submit,
    wait_for,
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
