"""The job endpoints: submit a job, read one job's status, list recent status changes."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, stream_with_context
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from api import validation, webhooks
from api.auth import require_api_key
from api.body import request_body
from api.context import services
from api.encoding import statuses_json, streamed_envelope, streamed_statuses
from api.errors import ApiError
from api.request_metrics import REFUSED_SUBMISSIONS
from api.responses import reply
from shared import tasks
from shared.job import TrackedJob, log_transition
from shared.queue import MemoryFullError, QueueFullError
from shared.status import Status, from_rq

bp = Blueprint("jobs", __name__)
bp.before_request(require_api_key)


@bp.post("/v1/toolkit/jobs/status")
def jobs_status() -> Response:
    """Return {job_id: status} for every job whose state changed in the last since_seconds."""
    svc = services()
    since = validation.since_seconds(request_body(), svc.settings.retention_seconds)
    # Read before the answer starts: a Redis failure or a missing index still sets its status.
    window = svc.index.window(since, svc.settings.queue_name)
    if window.complete:
        response = statuses_json(window.ids)
        return reply(200, "success", response=response, queue_length=window.queue_length)

    # Larger than one read: streamed, a batch at a time, so memory stays flat and each Redis
    # command short (docs/index-layout.md, "Reading a window").
    def envelope(response: Any) -> bytes:
        return reply(200, "success", response=response, queue_length=window.queue_length).get_data()

    parts = streamed_statuses(itertools.chain([window.ids], window.rest))
    body = stream_with_context(streamed_envelope(envelope, parts))
    return Response(body, status=200, mimetype="application/json")


@bp.post("/v1/toolkit/job/status")
def job_status() -> Response:
    """Return one job's status, timestamps, progress and result or error."""
    svc = services()
    job_id = validation.job_id(request_body())
    try:
        job = TrackedJob.fetch(job_id, connection=svc.redis)
    except NoSuchJobError:
        raise ApiError(404, "Job not found", job_id=job_id) from None
    return reply(200, "success", job_id=job_id, response=describe(job))


@bp.post("/v1/toolkit/jobs")
def submit() -> Response:
    """Enqueue a task of the catalog, unless the queue is at its limit (then 429)."""
    svc = services()
    body = request_body()
    wanted = validation.job_request(body)
    if wanted.webhook_url is not None:
        webhooks.check_target(wanted.webhook_url, allow_private=svc.settings.webhook_allow_private)
    try:
        task = tasks.get(wanted.task)
        payload = task.validate(wanted.payload)
    except (tasks.UnknownTaskError, tasks.InvalidPayloadError) as exc:
        raise ApiError(400, str(exc)) from None

    limit = svc.settings.max_queue_length
    max_queue_length: int | str = limit or "unlimited"
    retention = svc.settings.retention_seconds
    job = svc.queue.create_task_job(
        task,
        payload,
        timeout=svc.settings.job_timeout,
        result_ttl=retention,
        failure_ttl=retention,
        description=f"{task.name} task",
        meta=_meta(body.get("id"), wanted.webhook_url),
    )
    try:
        queue_length = svc.queue.enqueue_bounded(job, limit, svc.budget)
    except MemoryFullError as full:
        REFUSED_SUBMISSIONS.labels("memory").inc()
        raise ApiError(
            503,
            "Redis is too full to accept more jobs: try again later",
            headers={"Retry-After": str(svc.settings.retry_after_seconds)},
            queue_length=full.length,
            max_queue_length=max_queue_length,
        ) from None
    except QueueFullError as full:
        REFUSED_SUBMISSIONS.labels("queue_full").inc()
        raise ApiError(
            429,
            f"MAX_QUEUE_LENGTH ({limit}) reached",
            headers={"Retry-After": str(svc.settings.retry_after_seconds)},
            queue_length=full.length,
            max_queue_length=max_queue_length,
        ) from None
    log_transition(job, None)
    return reply(
        202,
        "processing",
        job_id=job.id,
        response={"job_id": job.id, "task": task.name, "job_status": Status.QUEUED.value},
        queue_length=queue_length,
        max_queue_length=max_queue_length,
    )


def describe(job: Job) -> dict[str, Any]:
    """Return the public description of `job`."""
    rq_status = job.get_status(refresh=False) or JobStatus.QUEUED
    status = from_rq(rq_status)
    meta = job.meta or {}
    described: dict[str, Any] = {
        "job_id": job.id,
        "job_status": status.value,
        "queue": job.origin,
        "task": meta.get("task"),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "progress": 100 if status is Status.DONE else meta.get("progress", 0),
    }
    if status is Status.DONE:
        described["result"] = job.return_value()
    if status is Status.FAILED:
        described["error"] = _error_of(job)
    return described


def _meta(client_id: Any, webhook_url: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if client_id is not None:
        meta["client_id"] = client_id
    if webhook_url is not None:
        meta["webhook_url"] = webhook_url
    return meta


def _error_of(job: Job) -> str | None:
    result = job.latest_result()
    text = result.exc_string if result is not None else None
    # A traceback of only white space (written by something other than a worker) has no line.
    lines = str(text or "").strip().splitlines()
    if not lines:
        return None
    # The last line of a traceback names the exception and its message.
    last = lines[-1]
    if "AbandonedJobError" in last:
        return f"The worker running this job died (its heartbeat lapsed): {last}"
    return last


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
