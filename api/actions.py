"""The job actions: cancel a job (waiting or running), retry one that failed or was canceled.

Both act through RQ's own operations on the service's classes, so the index, the webhook of
the end and RQ's registries move together, and rq-dashboard's buttons do the same thing.
"""

from __future__ import annotations

import contextlib

from flask import Blueprint, Response
from redis.exceptions import WatchError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
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
from shared.job import TrackedJob
from shared.status import Status, from_rq

bp = Blueprint("actions", __name__)
bp.before_request(require_api_key)

# How long a cancel of a running job waits for its worker to stop it before answering 202.
STOP_WAIT_SECONDS = 10.0


@bp.post("/v1/toolkit/job/cancel")
def cancel() -> Response:
    """Cancel a waiting job (it never runs) or stop a running one; 409 for one that ended."""
    job_id = validation.job_id(request_body())
    for _ in range(3):
        job = fetch_job(job_id)
        status = _status(job)
        if status is Status.QUEUED:
            if _cancel_waiting(job):
                JOB_ACTIONS.labels("cancel", "canceled").inc()
                return reply(200, "canceled", job_id=job_id, response=describe(fetch_job(job_id)))
            continue  # a worker took it meanwhile: look again
        if status is Status.RUNNING:
            return _stop_running(job)
        JOB_ACTIONS.labels("cancel", "conflict").inc()
        raise ApiError(409, f"Job already {status.value}: nothing to cancel", job_id=job_id)
    JOB_ACTIONS.labels("cancel", "conflict").inc()
    raise ApiError(409, "The job changed state while being canceled: try again", job_id=job_id)


def _cancel_waiting(job: Job) -> bool:
    """Cancel `job` as RQ does if it is still waiting, in one transaction; return whether it was."""
    with job.connection.pipeline() as pipe:
        # A worker taking the job between the check and the cancel would otherwise see a
        # canceled job run to its end: WATCH makes the cancel happen only if none did.
        pipe.watch(job.key)  # type: ignore[no-untyped-call]
        raw: bytes | None = pipe.hget(job.key, "status")  # type: ignore[assignment]
        if raw is None or from_rq(raw.decode()) is not Status.QUEUED:
            return False
        pipe.multi()
        try:
            job.cancel(pipeline=pipe)
            pipe.execute()
        except WatchError:
            return False
    return True


def _stop_running(job: Job) -> Response:
    """Ask the job's worker (on any host) to stop it, and wait a little for it to end."""
    # InvalidJobOperation: it ended, or no worker holds it yet; the state below says which.
    with contextlib.suppress(InvalidJobOperation):
        send_stop_job_command(job.connection, job.id)
    ended = wait_for_end(job.connection, job.id, STOP_WAIT_SECONDS, lambda: has_ended(job))
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
