"""The job endpoints: submit a job, read one job's status, list recent status changes."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, request, stream_with_context, url_for
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from api import feed, idempotency, validation, webhooks
from api.auth import require_api_key
from api.body import request_body
from api.context import services
from api.encoding import statuses_json, streamed_envelope, streamed_statuses
from api.errors import ApiError
from api.handover import handover
from api.request_metrics import REFUSED_SUBMISSIONS
from api.responses import UNKNOWN, reply
from api.waiting import wait_for_end
from shared import keys, tasks
from shared.delivery import WebhookPolicy, read_state, waiting_state
from shared.index import FINAL_STATUSES, Batch, Facets, Window
from shared.job import TrackedJob, error_message, log_transition
from shared.queue import MemoryFullError, QueueFullError
from shared.status import Status, from_rq

bp = Blueprint("jobs", __name__)
bp.before_request(require_api_key)


@bp.post("/v1/toolkit/jobs/status")
def jobs_status() -> Response:
    """Return {job_id: status} for every job whose latest change lies in the query's window (the
    last since_seconds by default): filtered, counted and in pages as the body asks."""
    settings = services().settings
    query = feed.from_body(request_body(), settings.retention_seconds, key=_cursor_key())
    return _changes(query)


@bp.get("/v1/toolkit/jobs/status")
def jobs_status_get() -> Response:
    """Answer the queries POST answers, from the query string (`?status=failed&limit=50`)."""
    args = {name: request.args.getlist(name) for name in request.args}
    retention = services().settings.retention_seconds
    return _changes(feed.from_query_string(args, retention, key=_cursor_key()))


def _cursor_key() -> bytes:
    return feed.cursor_key(services().settings.require_api_key())


def _changes(query: feed.FeedQuery) -> Response:
    svc = services()
    if query.limit is not None:
        page = svc.index.page(
            query.start,
            svc.settings.queue_name,
            query.limit,
            statuses=query.listed,
            facets=query.facets,
            counts=query.counts,
            counted_from=query.cursor.start if query.cursor is not None else None,
        )
        start = query.cursor.start if query.cursor is not None else page.start
        following = (
            None
            if page.end is None
            else feed.encode_cursor(page.end, query, start, key=_cursor_key())
        )
        return reply(
            200,
            "success",
            response={job_id.decode(): status.value for job_id, status in page.ids},
            queue_length=page.queue_length,
            **feed.answer_fields(page.fence, following, page.counts),
        )

    # The whole window at once: the original answer. Read before the answer starts: a Redis
    # failure or a missing index still sets its status.
    window = _window(query)
    extra = feed.answer_fields(window.fence, None, window.counts)
    if window.complete:
        response = statuses_json(_of_facets(window.ids, query.facets))
        return reply(200, "success", response=response, queue_length=window.queue_length, **extra)

    # Larger than one read: streamed, a batch at a time, so memory stays flat and each Redis
    # command short (docs/index-layout.md, "Reading a window").
    def envelope(response: Any) -> bytes:
        return reply(
            200, "success", response=response, queue_length=window.queue_length, **extra
        ).get_data()

    batches = (
        _of_facets(batch, query.facets) for batch in itertools.chain([window.ids], window.rest)
    )
    body = stream_with_context(streamed_envelope(envelope, streamed_statuses(batches)))
    return Response(body, status=200, mimetype="application/json")


def _window(query: feed.FeedQuery) -> Window:
    """Return the whole window's first read, unless the fast poll read it (or failed to)."""
    handed = handover()
    if handed is not None and handed.error is not None:
        raise handed.error
    if handed is not None and handed.window is not None:
        return handed.window
    svc = services()
    return svc.index.window(
        query.start.seconds,
        svc.settings.queue_name,
        after=query.start.after,
        statuses=query.listed,
        counts=query.counts,
    )


def _of_facets(batch: Batch, facets: Facets) -> Batch:
    """Return the ids of `batch` whose jobs are of `facets` (all of them without facets)."""
    if not facets:
        return batch
    index = services().index
    kept: Batch = []
    for status, members in batch:
        keep = index.matching(members, facets) if members else []
        kept.append((status, [m for m, ok in zip(members, keep, strict=True) if ok]))
    return kept


@bp.post("/v1/toolkit/job/status")
def job_status() -> Response:
    """Return one job's status, timestamps, progress and result or error; with `wait`, once the
    job ends or the wait is over."""
    body = request_body()
    return _one_job(validation.job_id(body), validation.wait_seconds(body.get("wait")))


@bp.get("/v1/toolkit/job/status")
def job_status_get() -> Response:
    """Return one job's status, as POST does, from the query (`?job_id=...&wait=...`)."""
    chosen = validation.job_id(request.args.to_dict())
    return _one_job(chosen, validation.wait_query(request.args.get("wait")))


def _one_job(job_id: str, wait: float) -> Response:
    svc = services()
    job = fetch_job(job_id)
    if wait > 0 and from_rq(job.get_status(refresh=False) or "queued") not in FINAL_STATUSES:
        wait_for_end(svc.redis, job_id, wait, lambda: has_ended(job))
        job = fetch_job(job_id)
    return reply(200, "success", job_id=job_id, response=describe(job))


def fetch_job(job_id: str) -> Job:
    """Return the job `job_id`, or raise ApiError 404 (a webhook delivery is no job of the API)."""
    try:
        job = TrackedJob.fetch(job_id, connection=services().redis)
    except NoSuchJobError:
        raise ApiError(404, "Job not found", job_id=job_id) from None
    if keys.is_webhook_queue(job.origin):
        raise ApiError(404, "Job not found", job_id=job_id)
    return job


def has_ended(job: Job) -> bool:
    """Return whether `job` has ended now (its status read afresh); a job gone has ended."""
    try:
        return from_rq(job.get_status(refresh=True) or "queued") in FINAL_STATUSES
    except (InvalidJobOperation, NoSuchJobError):
        return True


@bp.post("/v1/toolkit/jobs")
def submit() -> Response:
    """Enqueue a task of the catalog, unless the queue is at its limit (then 429); a named
    submission seen before answers with its job (or 422 if it asked for something else)."""
    svc = services()
    body = request_body()
    wanted = validation.job_request(body)
    key = validation.idempotency_key(request.headers.get("Idempotency-Key"))
    if key is not None and wanted.job_id is not None:
        raise ApiError(400, "Send job_id or an Idempotency-Key header, not both")
    job_id = idempotency.job_id_for_key(key) if key is not None else wanted.job_id
    digest = idempotency.fingerprint(body) if job_id is not None else None
    if job_id is not None and (seen := _seen(job_id, digest)) is not None:
        return seen
    try:
        task = tasks.get(wanted.task)
        payload = task.validate(wanted.payload)
    except (tasks.UnknownTaskError, tasks.InvalidPayloadError) as exc:
        raise ApiError(400, str(exc)) from None
    meta: dict[str, Any] = {}
    if "id" in body:
        meta["client_id"] = body["id"]
    if digest is not None:
        meta["request_sha256"] = digest
    if wanted.webhook_url is not None:
        meta["webhook"] = _webhook_policy(wanted.webhook_url).as_meta()

    limit = svc.settings.max_queue_length
    max_queue_length: int | str = limit or "unlimited"
    retention = svc.settings.retention_seconds
    job = svc.queue.create_task_job(
        task,
        payload,
        job_id=job_id,
        timeout=svc.settings.job_timeout,
        result_ttl=retention,
        failure_ttl=retention,
        description=f"{task.name} task",
        meta=meta,
    )
    try:
        queue_length = svc.queue.enqueue_bounded(job, limit, svc.budget, unique=job_id is not None)
    except DuplicateJobError:
        # Another submission under the same name won the race: answer as it did.
        seen = _seen(job.id, digest)
        if seen is None:
            raise ApiError(409, "A job of that name was just removed: submit again") from None
        return seen
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
    return _accepted(job, Status.QUEUED, queue_length, max_queue_length)


def _webhook_policy(url: str) -> WebhookPolicy:
    settings = services().settings
    if settings.webhook_secret is None:
        raise ApiError(
            400,
            "webhook_url is not available: the service has no WEBHOOK_SECRET to sign deliveries "
            "with",
        )
    webhooks.check_target(url, allow_private=settings.webhook_allow_private)
    return WebhookPolicy(
        url=url,
        max_attempts=settings.webhook_max_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        retention_seconds=settings.retention_seconds,
    )


def _seen(job_id: str, digest: str | None) -> Response | None:
    """Answer a named submission whose job exists: that job (same request) or 422; None when
    there is no such job."""
    try:
        job = TrackedJob.fetch(job_id, connection=services().redis)
    except NoSuchJobError:
        return None
    if (job.meta or {}).get("request_sha256") != digest:
        raise ApiError(
            422,
            "This job_id or Idempotency-Key was already used for a different request",
            job_id=job_id,
        )
    limit = services().settings.max_queue_length
    status = from_rq(job.get_status(refresh=False) or "queued")
    return _accepted(
        job, status, UNKNOWN, limit or "unlimited", headers={"Idempotent-Replayed": "true"}
    )


def _accepted(
    job: Job,
    status: Status,
    queue_length: Any,
    max_queue_length: int | str,
    headers: dict[str, str] | None = None,
) -> Response:
    settings = services().settings
    return reply(
        202,
        "processing",
        job_id=job.id,
        response={
            "job_id": job.id,
            "task": (job.meta or {}).get("task"),
            "job_status": status.value,
        },
        queue_length=queue_length,
        max_queue_length=max_queue_length,
        headers={
            "Location": url_for("jobs.job_status_get", job_id=job.id),
            "Retry-After": str(settings.poll_after_seconds),
            **(headers or {}),
        },
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
        described["error"] = error_message(job)
    if isinstance(meta.get("webhook"), dict):
        described["webhook"] = read_state(job.connection, job.id) or waiting_state()
    return described


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
