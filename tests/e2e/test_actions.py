"""Cancel and retry against real gunicorn and `python -m worker` (forking), and rq-dashboard's
and RQ's own tools agreeing with them."""

from __future__ import annotations

import http.client
import json
import logging
import time
from typing import Any

import pytest
import redis
from rq import Worker
from rq.job import Job, JobStatus

from api.actions import STOP_WAIT_SECONDS
from shared.status import Status
from tests.e2e.test_dashboard import BASIC, PASSWORD, get_json, listed
from tests.helpers import (
    HOST,
    JOB_CANCEL,
    JOB_RETRY,
    Process,
    RedisServer,
    Reply,
    call,
    free_port,
    index_status,
    index_view,
    job_status,
    jobs_status,
    queue_length,
    rq_view,
    run_rq,
    running,
    running_tree,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.e2e

logger = logging.getLogger(__name__)

# "Within a few seconds": a stopped job's worker kills its work-horse as the command arrives.
STOPPED_WITHIN = 5.0
# A task that fails on a job's first run and succeeds on any later one.
FLAKY_TASKS = "tests.worker.rq_tools_tasks"


def described(port: int, job_id: str) -> dict[str, Any]:
    """Return the `response` of POST /v1/toolkit/job/status for `job_id`, asserting a 200."""
    reply = job_status(port, job_id)
    assert reply.status == 200, reply.body
    response: dict[str, Any] = reply.body["response"]
    return response


def state(port: int, job_id: str) -> str:
    """Return the job's status as POST /v1/toolkit/job/status reports it."""
    return str(described(port, job_id)["job_status"])


def cancel(port: int, job_id: str) -> Reply:
    """POST /v1/toolkit/job/cancel for `job_id`; the answer may wait for the job's worker."""
    return call(port, "POST", JOB_CANCEL, {"job_id": job_id}, timeout=STOP_WAIT_SECONDS + 30)


def retry(port: int, job_id: str) -> Reply:
    """POST /v1/toolkit/job/retry for `job_id`."""
    return call(port, "POST", JOB_RETRY, {"job_id": job_id})


def rq_status(conn: redis.Redis, job_id: str) -> JobStatus | None:
    """Return the status RQ itself holds for the job."""
    return Job.fetch(job_id, connection=conn).get_status()


def listing(port: int) -> dict[str, str]:
    """Return the {job_id: status} map of POST /v1/toolkit/jobs/status."""
    reply = jobs_status(port)
    assert reply.status == 200, reply.body
    response: dict[str, str] = reply.body["response"]
    return response


def assert_queued_everywhere(port: int, conn: redis.Redis, job_id: str) -> None:
    """Assert the job is queued in our answer, our index, our listing and RQ alike."""
    assert state(port, job_id) == "queued"
    assert index_status(conn, job_id) is Status.QUEUED
    assert listing(port)[job_id] == "queued"
    assert rq_status(conn, job_id) == JobStatus.QUEUED


def worker_ready(conn: redis.Redis, worker: Process) -> None:
    """Wait until `worker` has registered with RQ."""
    wait_for(worker, lambda: Worker.all(connection=conn), timeout=30)


def stop_running_job(port: int, job_id: str) -> Reply:
    """Cancel a running job; wait until it has ended if the answer was a 202. Return the answer."""
    reply = cancel(port, job_id)
    assert reply.status in (200, 202), reply.body
    assert reply.body["job_id"] == job_id
    if reply.status == 202:
        wait_until(lambda: state(port, job_id) == "canceled", timeout=30)
    else:
        assert reply.body["message"] == "canceled"
        assert reply.body["response"]["job_status"] == "canceled"
    return reply


@pytest.mark.timeout(120)
def test_cancel_stops_a_running_job_and_the_worker_runs_the_next(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """A running sleep 30 canceled: ended canceled (RQ: stopped) in seconds; the worker goes on."""
    port = free_port()
    worker = start_worker(env)
    with running(start_api(env, port)), running_tree(worker):
        job_id = submit_ok(port, "sleep", {"seconds": 30})
        wait_for(worker, lambda: state(port, job_id) == "running", timeout=30)
        asked_at = time.time()
        reply = stop_running_job(port, job_id)
        # Stopped in seconds, not at the end of its 30 s.
        stopped_in = time.time() - asked_at
        logger.info(
            "cancel answered %d in %.3fs; canceled %.3fs after it was asked",
            reply.status,
            reply.elapsed,
            stopped_in,
        )
        assert stopped_in < STOPPED_WITHIN, stopped_in

        after = described(port, job_id)
        assert after["job_status"] == "canceled", after
        assert after["started_at"] is not None
        assert rq_status(conn, job_id) == JobStatus.STOPPED
        assert index_status(conn, job_id) is Status.CANCELED
        assert listing(port)[job_id] == "canceled"
        # Nothing left to cancel once it has ended.
        again = cancel(port, job_id)
        assert again.status == 409, again.body

        # The worker survived the stop and takes the next job.
        assert worker.popen.poll() is None, worker.output()
        following = submit_ok(port, "echo", {"after": "stop"})
        assert wait_finished(port, following)["job_status"] == "done"
        assert worker.popen.poll() is None, worker.output()
        final = described(port, job_id)
    assert len(Worker.all(connection=conn)) == 0
    # A job that ran and was stopped has ended: it says when, as a done or failed one does.
    assert final["ended_at"] is not None, final
    assert final["started_at"] <= final["ended_at"]


@pytest.mark.timeout(120)
def test_a_job_stopped_while_running_can_be_retried_and_runs_again(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """A job canceled while running (RQ: stopped) is retried: 202, queued, then running again."""
    port = free_port()
    worker = start_worker(env)
    with running(start_api(env, port)), running_tree(worker):
        job_id = submit_ok(port, "sleep", {"seconds": 30})
        wait_for(worker, lambda: state(port, job_id) == "running", timeout=30)
        first_start = described(port, job_id)["started_at"]
        stop_running_job(port, job_id)

        again = retry(port, job_id)
        assert again.status == 202, again.body
        assert again.body["job_id"] == job_id
        wait_for(
            worker,
            lambda: described(port, job_id)["started_at"] not in (None, first_start),
            timeout=30,
        )
        assert state(port, job_id) == "running"
        stop_running_job(port, job_id)
        assert index_view(conn) == rq_view(conn) == {job_id: Status.CANCELED}


@pytest.mark.timeout(120)
def test_cancel_of_a_waiting_job_means_it_never_runs(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """A waiting job canceled: 200 canceled; a worker started later never runs it."""
    port = free_port()
    with running(start_api(env, port)):
        job_id = submit_ok(port, "sleep", {"seconds": 0.5})
        # Only a failed or canceled job can be retried.
        assert retry(port, job_id).status == 409

        reply = cancel(port, job_id)
        assert reply.status == 200, reply.body
        assert reply.body["message"] == "canceled"
        assert reply.body["response"]["job_status"] == "canceled"
        assert reply.body["response"]["started_at"] is None
        assert index_status(conn, job_id) is Status.CANCELED
        assert rq_status(conn, job_id) == JobStatus.CANCELED
        assert queue_length(conn) == 0

        worker = start_worker(env)
        with running_tree(worker):
            # A job submitted after it is run: the worker has been through the queue.
            marker = submit_ok(port, "echo", {"after": "cancel"})
            assert wait_finished(port, marker)["job_status"] == "done"
            log = worker.output()
        after = described(port, job_id)
        assert cancel(port, marker).status == 409
        assert retry(port, marker).status == 409

    assert after["job_status"] == "canceled", after
    assert after["started_at"] is None
    assert marker in log
    assert job_id not in log, log
    assert index_view(conn) == rq_view(conn) == {job_id: Status.CANCELED, marker: Status.DONE}


@pytest.mark.timeout(120)
def test_retry_of_a_failed_job_queues_it_at_once_and_it_runs_again(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """A failed job retried: 202 and queued at once everywhere; it runs again, a new end."""
    port = free_port()
    with running(start_api(env, port)):
        first_worker = start_worker(env, name="first-worker")
        with running_tree(first_worker):
            job_id = submit_ok(port, "fail", {"message": "on purpose"})
            first = wait_finished(port, job_id)
        assert first["job_status"] == "failed", first

        # No worker now: nothing can take the job before it is seen queued.
        reply = retry(port, job_id)
        assert reply.status == 202, reply.body
        assert reply.body["job_id"] == job_id
        assert reply.body["response"]["job_status"] == "queued"
        assert_queued_everywhere(port, conn, job_id)
        assert queue_length(conn) == 1

        second_worker = start_worker(env, name="second-worker")
        with running_tree(second_worker):
            second = wait_finished(port, job_id)
    assert second["job_status"] == "failed", second
    assert "on purpose" in second["error"]
    assert second["ended_at"] > first["ended_at"]
    assert second["started_at"] > first["ended_at"]


@pytest.mark.timeout(120)
def test_retry_of_a_job_canceled_while_waiting_runs_it_to_done(
    env: dict[str, str], conn: redis.Redis
) -> None:
    """A job canceled while waiting, then retried: 202, queued at once, then run to done."""
    port = free_port()
    with running(start_api(env, port)):
        job_id = submit_ok(port, "sleep", {"seconds": 0.5})
        assert cancel(port, job_id).status == 200

        reply = retry(port, job_id)
        assert reply.status == 202, reply.body
        assert reply.body["response"]["job_status"] == "queued"
        assert_queued_everywhere(port, conn, job_id)
        assert queue_length(conn) == 1

        worker = start_worker(env)
        with running_tree(worker):
            ended = wait_finished(port, job_id)
    assert ended["job_status"] == "done", ended
    assert ended["result"] == {"slept": 0.5}
    assert index_view(conn) == rq_view(conn) == {job_id: Status.DONE}


# --- rq-dashboard and the rq command ---------------------------------------------------------


def dashboard_post(port: int, path: str) -> tuple[int, Any]:
    """POST to the mounted dashboard's `path` as its page's script does; return status and JSON."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", path, headers={"Authorization": BASIC, "Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), body
        return resp.status, json.loads(body)
    finally:
        conn.close()


@pytest.mark.timeout(180)
def test_the_dashboards_actions_and_rq_requeue_agree_with_the_api(
    env: dict[str, str], conn: redis.Redis, redis_server: RedisServer
) -> None:
    """rq-dashboard's requeue and delete and `rq requeue` move jobs as our API then reports."""
    port = free_port()
    env = {**env, "DASHBOARD_PASSWORD": PASSWORD, "TASK_MODULES": FLAKY_TASKS}
    with running(start_api(env, port)):
        first_worker = start_worker(env, name="first-worker")
        with running_tree(first_worker):
            by_dashboard = submit_ok(port, "flaky", {"by": "dashboard"})
            by_cli = submit_ok(port, "flaky", {"by": "cli"})
            for job_id in (by_dashboard, by_cli):
                assert wait_finished(port, job_id)["job_status"] == "failed"

        # No worker from here on until the end: each state is seen before anything moves it.
        canceled = submit_ok(port, "echo", {"to": "cancel"})
        deleted = submit_ok(port, "echo", {"to": "delete"})

        # rq-dashboard has no cancel of its own: canceled through the API, it shows as canceled.
        assert cancel(port, canceled).status == 200
        assert listed(port, "canceled") == [canceled]
        assert get_json(port, f"/dashboard/0/data/job/{canceled}.json")["status"] == "canceled"
        # Its requeue takes failed jobs only: a canceled one is refused and left as it was.
        status, body = dashboard_post(port, f"/dashboard/job/{canceled}/requeue")
        assert status == 409, body
        assert state(port, canceled) == "canceled"

        # Deleted from the dashboard: gone from our answer and our listing.
        status, body = dashboard_post(port, f"/dashboard/job/{deleted}/delete")
        assert (status, body) == (200, {"status": "OK"})
        gone = job_status(port, deleted)
        assert gone.status == 404, gone.body
        assert deleted not in listing(port)

        # Requeued from the dashboard, and by `rq requeue` with the service's job class.
        assert sorted(listed(port, "failed")) == sorted([by_dashboard, by_cli])
        status, body = dashboard_post(port, f"/dashboard/job/{by_dashboard}/requeue")
        assert (status, body) == (200, {"status": "OK"})
        assert_queued_everywhere(port, conn, by_dashboard)
        run_rq(
            redis_server,
            [
                "requeue",
                "--url",
                redis_server.url,
                "-j",
                "shared.job.TrackedJob",
                "--queue",
                "default",
                by_cli,
            ],
            TASK_MODULES=FLAKY_TASKS,
        )
        assert_queued_everywhere(port, conn, by_cli)
        assert listed(port, "failed") == []
        assert sorted(listed(port, "queued")) == sorted([by_dashboard, by_cli])
        assert queue_length(conn) == 2

        second_worker = start_worker(env, name="second-worker")
        with running_tree(second_worker):
            for job_id in (by_dashboard, by_cli):
                assert wait_finished(port, job_id)["job_status"] == "done"
        assert described(port, by_dashboard)["result"] == {"by": "dashboard"}
        assert described(port, by_cli)["result"] == {"by": "cli"}
        assert listing(port) == {by_dashboard: "done", by_cli: "done", canceled: "canceled"}
        assert sorted(listed(port, "finished")) == sorted([by_dashboard, by_cli])
        assert listed(port, "canceled") == [canceled]
    expected = {by_dashboard: Status.DONE, by_cli: Status.DONE, canceled: Status.CANCELED}
    assert index_view(conn) == rq_view(conn) == expected
