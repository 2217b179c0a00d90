"""The job actions: cancel a job (waiting or running), retry one that failed or was canceled.

Both act through RQ's own operations on the service's classes, so the index, the webhook of
the end and RQ's registries move together, and rq-dashboard's buttons do the same thing.
"""

from __future__ import annotations

import time
from enum import Enum

from flask import Blueprint, Response
from redis.exceptions import WatchError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry

from api import validation
from api.auth import require_api_key
from api.body import request_body
from api.context import services
from api.errors import ApiError
from api.jobs import describe, fetch_job, has_ended
from api.request_metrics import JOB_ACTIONS
from api.responses import reply
from api.waiting import wait_for_end
from shared import keys
from shared.job import TrackedJob
from shared.status import Status, from_rq

bp = Blueprint("actions", __name__)
bp.before_request(require_api_key)

# How long a cancel of a running job waits for its worker to stop it before answering 202.
STOP_WAIT_SECONDS = 10.0
# How many times a cancel looks at a job that keeps changing (or whose queue does) before 409.
CANCEL_TRIES = 20
# How often a cancel asks again for the stop of a job taken by a worker but not yet started.
STOP_ASK_INTERVAL = 0.05


@bp.post("/v1/toolkit/job/cancel")
def cancel() -> Response:
    """Cancel a waiting job (it never runs) or stop a running one; 409 for one that ended."""
    job_id = validation.job_id(request_body())
    # Each look is two round trips; a busy queue (every push or pop changes the list) may need
    # a few.
    for _ in range(CANCEL_TRIES):
        job = fetch_job(job_id)
        status = _status(job)
        if status is Status.QUEUED:
            outcome = _cancel_waiting(job)
            if outcome is Waiting.CANCELED:
                JOB_ACTIONS.labels("cancel", "canceled").inc()
                return reply(200, "canceled", job_id=job_id, response=describe(fetch_job(job_id)))
            if outcome is Waiting.TAKEN:
                # A worker popped it and has not yet marked it started: stop it instead.
                return _stop_running(job)
            continue  # the job or its queue changed meanwhile: look again
        if status is Status.RUNNING:
            return _stop_running(job)
        JOB_ACTIONS.labels("cancel", "conflict").inc()
        raise ApiError(409, f"Job already {status.value}: nothing to cancel", job_id=job_id)
    JOB_ACTIONS.labels("cancel", "conflict").inc()
    raise ApiError(409, "The job changed state while being canceled: try again", job_id=job_id)


class Waiting(Enum):
    """What a cancel of a waiting job found: canceled; taken by a worker; changed meanwhile."""

    CANCELED = "canceled"
    TAKEN = "taken"
    CHANGED = "changed"


def _cancel_waiting(job: Job) -> Waiting:
    """Cancel `job` as RQ does if it is still waiting, in one transaction."""
    queue_key = keys.rq_queue_key(job.origin)
    with job.connection.pipeline() as pipe:
        # A worker takes a job by popping it from the queue list, and marks it started only
        # later, in its work-horse: a job still "queued" may already be taken. WATCH both, and
        # cancel only a job that is still in the list (or scheduled or deferred, off the list,
        # which a worker cannot take before RQ's scheduler moves it, changing its status).
        pipe.watch(job.key, queue_key)  # type: ignore[no-untyped-call]
        raw: bytes | None = pipe.hget(job.key, "status")  # type: ignore[assignment]
        if raw is None or from_rq(raw.decode()) is not Status.QUEUED:
            return Waiting.CHANGED
        if JobStatus(raw.decode()) is JobStatus.QUEUED and pipe.lpos(queue_key, job.id) is None:
            return Waiting.TAKEN
        pipe.multi()
        try:
            job.cancel(pipeline=pipe)
            pipe.execute()
        except WatchError:
            return Waiting.CHANGED
    return Waiting.CANCELED


def _stop_running(job: Job) -> Response:
    """Ask the job's worker (on any host) to stop it, and wait a little for it to end."""
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while True:
        try:
            send_stop_job_command(job.connection, job.id)
            break
        except NoSuchJobError:
            raise ApiError(404, "Job not found", job_id=job.id) from None
        except InvalidJobOperation:
            # Taken from the queue, but its work-horse has not yet said which worker runs it:
            # ask again in a moment (a few milliseconds, as a rule), until it ends or time is up.
            if has_ended(job) or time.monotonic() > deadline:
                break
            time.sleep(STOP_ASK_INTERVAL)
    left = max(0.0, deadline - time.monotonic())
    ended = wait_for_end(job.connection, job.id, left, lambda: has_ended(job))
    job = fetch_job(job.id)
    status = _status(job)
    if ended and status is not Status.CANCELED:
        JOB_ACTIONS.labels("cancel", "conflict").inc()
        raise ApiError(409, f"Job already {status.value}: nothing to cancel", job_id=job.id)
    if status is Status.CANCELED:
        JOB_ACTIONS.labels("cancel", "stopped").inc()
        return reply(200, "canceled", job_id=job.id, response=describe(job))
    JOB_ACTIONS.labels("cancel", "stopping").inc()
    return reply(
        202,
        "stop requested: the job's worker has not stopped it yet",
        job_id=job.id,
        response=describe(job),
    )


@bp.post("/v1/toolkit/job/retry")
def retry() -> Response:
    """Run a failed or canceled job again under the same id; 409 for any other job."""
    job_id = validation.job_id(request_body())
    job = fetch_job(job_id)
    status = _status(job)
    if status not in (Status.FAILED, Status.CANCELED):
        JOB_ACTIONS.labels("retry", "conflict").inc()
        raise ApiError(
            409,
            f"Job is {status.value}: only a failed or canceled job can be retried",
            job_id=job_id,
        )
    svc = services()
    # RQ keeps a failed or stopped job in its failed registry, a canceled one in the canceled
    # registry; its requeue moves it back to its queue (the index records `queued` as it does).
    for registry in (
        FailedJobRegistry(job.origin, connection=svc.redis, job_class=TrackedJob),
        CanceledJobRegistry(job.origin, connection=svc.redis, job_class=TrackedJob),
    ):
        try:
            registry.requeue(job)
        except InvalidJobOperation:
            continue
        JOB_ACTIONS.labels("retry", "queued").inc()
        return reply(202, "processing", job_id=job_id, response=describe(fetch_job(job_id)))
    JOB_ACTIONS.labels("retry", "conflict").inc()
    raise ApiError(409, "The job is in no registry to retry it from: try again", job_id=job_id)


def _status(job: Job) -> Status:
    return from_rq(job.get_status(refresh=False) or JobStatus.QUEUED)
