"""Bounded enqueue: a job joins the queue only while it is below its limit, in one atomic step."""

from __future__ import annotations

from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue
from rq.job import Job

MAX_ATTEMPTS = 1000


class QueueFullError(Exception):
    """The queue already holds its maximum number of waiting jobs."""

    def __init__(self, length: int) -> None:
        super().__init__(f"queue holds {length} waiting jobs")
        self.length = length


def enqueue_bounded(queue: Queue, job: Job, max_length: int) -> int:
    """Enqueue `job` unless `queue` holds `max_length` waiting jobs (0: no limit).

    Return the queue length right after the enqueue. The length check and RQ's own enqueue run
    under WATCH on the queue list, so concurrent submitters can never push it past the limit:
    if anyone changes the list between the check and EXEC, the transaction is retried.
    """
    with queue.connection.pipeline() as pipe:
        if not max_length:
            return _enqueue_in(pipe, queue, job)
        for _ in range(MAX_ATTEMPTS):
            try:
                pipe.watch(queue.key)  # type: ignore[no-untyped-call]
                length = int(pipe.llen(queue.key))
                if length >= max_length:
                    raise QueueFullError(length)
                return _enqueue_in(pipe, queue, job)
            except WatchError:
                continue
    raise RuntimeError(f"queue {queue.name!r} changed on every one of {MAX_ATTEMPTS} attempts")


def _enqueue_in(pipe: Pipeline, queue: Queue, job: Job) -> int:
    pipe.multi()
    queue.enqueue_job(job, pipeline=pipe)
    pipe.llen(queue.key)
    return int(pipe.execute()[-1])
