"""The RQ job class both sides use: every status RQ writes is recorded in the index too."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from redis.client import Pipeline
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.utils import import_attribute

from shared import delivery, index, keys, tasks
from shared.status import Status, from_rq

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The runner's name before the task catalog moved to shared/: jobs enqueued by an older
# version still name it, and run through the same runner.
LEGACY_RUNNER = "worker.registry.run_task"
RUNNER_NAMES = frozenset({tasks.RUNNER, LEGACY_RUNNER})


class UnregisteredFunctionError(Exception):
    """A job names a function other than the task runner."""


class TrackedJob(Job):
    """An RQ job whose status writes, deletion included, move its index entry atomically.

    Module-level, so RQ's own tools can name it: `rq worker -j shared.job.TrackedJob`.
    """

    @property
    def is_delivery(self) -> bool:
        """Return whether this is a webhook delivery, not a job of the index."""
        # A worker serves the delivery queue with this class too; deliveries stay RQ's alone.
        # The queue tells (QUEUE_NAME cannot name a delivery queue), without unpickling the data.
        return keys.is_webhook_queue(self.origin)

    def set_status(self, status: JobStatus, pipeline: Pipeline | None = None) -> None:
        """Set the status in RQ and in the index, inside `pipeline` when one is given; at an
        end, queue its webhook delivery in the same transaction."""
        if self.is_delivery:
            super().set_status(status, pipeline)
            delivery.settle_lost_try(
                pipeline if pipeline is not None else self.connection, self, JobStatus(status)
            )
            return
        # The record script writes RQ's own `status` field too, so the index can never
        # disagree with RQ, whether or not the caller batches into a MULTI pipeline.
        self._status = JobStatus(status)
        if pipeline is not None:
            self._record(pipeline)
            return
        with self.connection.pipeline() as own:
            self._record(own)
            own.execute()

    def _record(self, pipeline: Pipeline) -> None:
        policy = delivery.WebhookPolicy.of(self)
        sent = None
        if policy is not None and from_rq(self._status) in index.FINAL_STATUSES:
            sent = delivery.new_delivery(self, policy, pipeline)
        elif policy is not None:
            # Running again (retried): the last end's delivery state is no longer this job's.
            pipeline.delete(keys.delivery_state_key(self.id))
        if self._status is JobStatus.CANCELED:
            # RQ gives a canceled job's hash no expiry: it would stay for good (and its job_id or
            # Idempotency-Key with it). It lives as long as a failed one.
            pipeline.expire(self.key, self.failure_ttl or DEFAULT_FAILURE_TTL)
        if from_rq(self._status) is Status.QUEUED:
            # A job requeued from RQ's failed registry (our retry, rq-dashboard's requeue, `rq
            # requeue`) keeps the expiry its failure gave its hash: it would vanish while it
            # waits. A waiting job lives until it runs, as a new one does.
            pipeline.persist(self.key)
        index.record(pipeline, self.id, self._status, sent)

    def prepare_for_execution(self, worker_name: str, pipeline: Pipeline) -> None:
        """Mark the job started, as RQ does, and record `running` in the same pipeline."""
        super().prepare_for_execution(worker_name, pipeline)
        if not self.is_delivery:
            index.record(pipeline, self.id, JobStatus.STARTED)

    def delete(
        self,
        pipeline: Pipeline | None = None,
        remove_from_queue: bool = True,
        delete_dependents: bool = False,
    ) -> None:
        """Delete the job as RQ does and remove its index entry, in one transaction."""
        # RQ's own delete without a pipeline sends its commands one by one; ours always runs
        # them in a MULTI, so no reader sees the job gone from RQ but still in the index.
        # RQ deletes the dependents through its plain Job class: their entries go here too.
        gone = [self.id, *(self.dependent_ids if delete_dependents else [])]
        if pipeline is not None:
            super().delete(pipeline, remove_from_queue, delete_dependents)
            index.forget(pipeline, *gone)
            return
        with self.connection.pipeline() as own:
            super().delete(own, remove_from_queue, delete_dependents)
            index.forget(own, *gone)
            own.execute()

    # Callbacks would be another way to name a function; the service never sets them, and
    # a job that does (written straight into Redis) gets none run.
    @property
    def success_callback(self) -> Any:
        """Return no callback, whatever the job names."""
        return _refuse_callback(self, self._success_callback_name)

    @property
    def failure_callback(self) -> Any:
        """Return no callback, whatever the job names."""
        return _refuse_callback(self, self._failure_callback_name)

    @property
    def stopped_callback(self) -> Any:
        """Return no callback, whatever the job names."""
        return _refuse_callback(self, self._stopped_callback_name)

    @property
    def func(self) -> Any:
        """Return the task runner (or the webhook delivery), refusing any other function."""
        if self.func_name == delivery.DELIVER:
            # A fixed name, never a client's: only the worker, which runs it, imports it.
            return import_attribute(delivery.DELIVER)
        if self.func_name not in RUNNER_NAMES:
            raise UnregisteredFunctionError(
                f"job {self.id} names {self.func_name!r}, not the task runner"
            )
        return tasks.run_task


def tracked_subclass(given: type[Any] | str | None, tracked: type[T]) -> type[T]:
    """Return `given` (a class or its dotted name) if it is a subclass of `tracked`, else `tracked`.

    RQ's tools pass their own default classes, or the names their users give; anything that
    is not one of the service's classes would bypass the index, so it gives way, with a warning
    unless it was RQ's plain default.
    """
    found = import_attribute(given) if isinstance(given, str) else given
    if isinstance(found, type) and issubclass(found, tracked):
        return found
    if found is not None and found not in (Job, Queue):
        logger.warning("%s replaces %r: its jobs would bypass the status index", tracked, given)
    return tracked


def _refuse_callback(job: Job, name: str | None) -> None:
    if name:
        logger.warning("job %s names callback %r; callbacks are not run", job.id, name)


def error_message(job: Job) -> str | None:
    """Return the error of a failed job in words: the last line of its traceback."""
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


def log_transition(job: Job, previous: Status | None) -> None:
    """Log one line for the status `job` has just reached from `previous` (once it is written).

    The duration is the time spent in the previous state: waiting in the queue before
    `running`, running before an end state.
    """
    reached = from_rq(job._status)
    # A webhook delivery has no task: it says what it is instead.
    label = (
        "webhook delivery" if keys.is_webhook_queue(job.origin) else (job.meta or {}).get("task")
    )
    since = job.enqueued_at if previous is Status.QUEUED else job.started_at
    until = job.started_at if reached is Status.RUNNING else job.ended_at
    duration = (until - since).total_seconds() if since and until else None
    logger.info(
        "job %s (%s) %s -> %s%s",
        job.id,
        label,
        previous.value if previous else "new",
        reached.value,
        f" after {duration:.3f}s" if duration is not None else "",
        extra={
            "job_id": job.id,
            "task": (job.meta or {}).get("task"),
            "from_status": previous.value if previous else None,
            "to_status": reached.value,
            "duration_s": round(duration, 3) if duration is not None else None,
        },
    )
