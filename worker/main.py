"""Build and run the RQ worker from settings."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError, OutOfMemoryError, TimeoutError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.registry import CanceledJobRegistry
from rq.utils import now
from rq.worker import BaseWorker

from shared import keys, tasks
from shared.index import StatusIndex
from shared.job import TrackedJob, log_transition, tracked_subclass
from shared.logs import configure_logging
from shared.queue import TrackedQueue
from shared.redis import connect
from shared.settings import Settings
from shared.status import Status
from worker import repair, webhooks
from worker.clock import RedisClock, use_redis_time

logger = logging.getLogger(__name__)

MAX_STARTUP_WAIT = 30.0

# How a dead worker's job is found (docs/reliability.md). The work-horse's monitor refreshes the
# job's heartbeat every JOB_MONITORING_INTERVAL seconds with a lease of that plus
# HEARTBEAT_GRACE, instead of RQ's 30 + 60; a worker killed outright leaves a lease that runs
# out within 30 s. Any live worker then sweeps it during maintenance (every
# MAINTENANCE_INTERVAL, also while it is busy with a job), and an idle worker wakes from its
# blocking dequeue at least every WORKER_TTL - 15 seconds to check. Together: a job abandoned
# by a dead worker is marked failed within about a minute while another worker is alive.
JOB_MONITORING_INTERVAL = 10
HEARTBEAT_GRACE = 20
WORKER_TTL = 35
# How long a worker keeps trying to store a finished job's outcome while Redis is out of
# memory, and its pauses between tries (doubling up to the maximum).
OUTCOME_PATIENCE = 300.0
OUTCOME_FIRST_DELAY = 0.5
OUTCOME_MAX_DELAY = 10.0


class TrackingMixin(BaseWorker):
    """Work tracked jobs only; trim the index during RQ's maintenance; log each transition.

    RQ's command line builds a worker with its own default job and queue classes
    (`rq worker -w worker.main.TrackedWorker`, without `-j`): the mixin puts the service's
    in their place, so a worker of this class records every transition however it started.
    """

    clock: RedisClock | None = None
    # The drift repair child and the webhook delivery worker `run()` starts; maintenance starts
    # them again should they die.
    repairer: multiprocessing.process.BaseProcess | None = None
    deliverer: multiprocessing.process.BaseProcess | None = None
    # The pid of the worker that started this one (the delivery worker's): it stops if it dies.
    parent: int | None = None

    def __init__(
        self,
        queues: Iterable[Queue | str] | Queue | str,
        *args: Any,
        settings: Settings | None = None,
        **kwargs: Any,
    ) -> None:
        """Build RQ's worker on tracked queues and jobs; settings default to the environment."""
        self.settings = settings if settings is not None else Settings.from_env()
        tasks.load(self.settings.task_modules, self.settings.max_result_bytes)
        webhooks.configure(self.settings)
        kwargs["job_class"] = tracked_subclass(kwargs.get("job_class"), TrackedJob)
        kwargs["queue_class"] = tracked_subclass(kwargs.get("queue_class"), TrackedQueue)
        if isinstance(queues, Queue | str):
            queues = [queues]
        # Queue objects (RQ's command line builds plain ones) become names, so that RQ builds
        # them again with the tracked queue class; their connection is the worker's.
        given = list(queues)
        if kwargs.get("connection") is None and given and isinstance(given[0], Queue):
            kwargs["connection"] = given[0].connection
        names = [queue.name if isinstance(queue, Queue) else queue for queue in given]
        super().__init__(names, *args, **kwargs)
        self.index = StatusIndex(self.connection, self.settings.retention_seconds)

    def prepare_job_execution(self, job: Job, *args: Any, **kwargs: Any) -> None:
        """Start the job as RQ does, then log the transition."""
        super().prepare_job_execution(job, *args, **kwargs)
        log_transition(job, Status.QUEUED)

    # Out of memory (noeviction), Redis refuses the worker's bookkeeping writes; RQ would let
    # the error end the work-horse before the job's outcome is stored, or the worker itself.
    # These writes are best-effort: skipped with a warning, the job goes on to its outcome,
    # which is stored whole or waited for (store_outcome). A lease not renewed for 30 s lets
    # another worker fail the job (docs/reliability.md, Known limits).
    def handle_execution_ended(self, job: Job, *args: Any, **kwargs: Any) -> None:
        """Stamp the job's end as RQ does; go on to store its outcome if Redis is full."""
        with _unless_out_of_memory(f"job {job.id}: its end heartbeat"):
            super().handle_execution_ended(job, *args, **kwargs)

    def set_current_job_working_time(self, *args: Any, **kwargs: Any) -> None:
        """Store the current job's working time as RQ does, unless Redis is full."""
        with _unless_out_of_memory(f"worker {self.name}: the job's working time"):
            super().set_current_job_working_time(*args, **kwargs)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        """Renew the worker's registration as RQ does, unless Redis is full."""
        with _unless_out_of_memory(f"worker {self.name}: its heartbeat"):
            super().heartbeat(*args, **kwargs)

    def handle_job_success(self, job: Job, *args: Any, **kwargs: Any) -> None:
        """Finish the job as RQ does (waiting out a full Redis), then log the transition."""
        store_outcome(
            job, self._each_try(partial(super().handle_job_success, job, *args, **kwargs))
        )
        log_transition(job, Status.RUNNING)

    def handle_job_failure(self, job: Job, *args: Any, **kwargs: Any) -> None:
        """Fail (or stop) the job as RQ does (waiting out a full Redis), then log it."""
        if job.ended_at is None:
            # The work-horse stamps the end; a stopped job's horse was killed before it could.
            job.ended_at = now()
        store_outcome(
            job, self._each_try(partial(super().handle_job_failure, job, *args, **kwargs))
        )
        log_transition(job, Status.RUNNING)

    def _each_try(self, write: Callable[[], None]) -> Callable[[], None]:
        """Return `write`, each call starting from the worker state RQ's first try found."""
        # RQ's outcome writes clear the execution and the stopped job's id while they build the
        # MULTI, before Redis refuses it: a second try without them would leave the execution
        # in the running registry (to fail the finished job when it expires) and record a
        # stopped job as failed.
        execution, stopped = self.execution, self._stopped_job_id

        def again() -> None:
            self.execution, self._stopped_job_id = execution, stopped
            write()

        return again

    def run_maintenance_tasks(self) -> None:
        """Run RQ's maintenance, then trim expired index entries."""
        if self.clock is not None:
            self.clock.sync()
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        removed = self.index.trim_expired()
        if removed:
            logger.info("trimmed %d expired index entries", removed)
        self.trim_canceled()
        if self.repairer is not None and not self.repairer.is_alive():
            logger.error(
                "the repair child ended (exit code %s); starting it again", self.repairer.exitcode
            )
            self.repairer = start_repairer(self.settings)
        if self.deliverer is not None and not self.deliverer.is_alive():
            logger.error(
                "the webhook delivery worker ended (exit code %s); starting it again",
                self.deliverer.exitcode,
            )
            self.deliverer = start_deliverer(self.settings)
        if self.parent is not None and os.getppid() != self.parent:
            # The worker that started this one was killed outright: stop as it would have.
            logger.warning("worker %s: its parent %s is gone; stopping", self.name, self.parent)
            os.kill(os.getpid(), signal.SIGTERM)

    def trim_canceled(self) -> None:
        """Drop the entries of RQ's canceled registries older than the retention."""
        # RQ never cleans them (CanceledJobRegistry has no expiry of its own), while a canceled
        # job's hash expires with the retention (TrackedJob): its entry would outlive it.
        cutoff = time.time() - self.settings.retention_seconds
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zremrangebyscore(
                    CanceledJobRegistry(queue.name, self.connection).key, "-inf", cutoff
                )
            trimmed = sum(int(n) for n in pipe.execute())
        if trimmed:
            logger.info("trimmed %d canceled registry entries past the retention", trimmed)


@contextmanager
def _unless_out_of_memory(what: str) -> Iterator[None]:
    try:
        yield
    except OutOfMemoryError:
        logger.warning("%s not stored: Redis is out of memory", what)


def store_outcome(job: Job, write: Callable[[], None], patience: float = OUTCOME_PATIENCE) -> None:
    """Run `write` (RQ's MULTI storing a job's outcome) again while Redis is out of memory."""
    # Out of memory, Redis refuses RQ's whole MULTI at EXEC and applies none of it, so the
    # same write can be tried again. Without this, a result that found Redis full would be
    # recorded as a failure, or lost with it. The submission gate keeps room for results
    # (docs/reliability.md); this covers memory filled by something else.
    deadline = time.monotonic() + patience
    delay = OUTCOME_FIRST_DELAY
    while True:
        try:
            write()
            return
        except OutOfMemoryError:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "job %s: Redis is out of memory; storing its outcome again in %.1f s", job.id, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, OUTCOME_MAX_DELAY)


# The mixin comes first so that its maintenance wraps RQ's; everything else (forking a
# work-horse or not) comes from the RQ class named second.
class TrackedWorker(TrackingMixin, Worker):
    """RQ's forking worker, plus index maintenance, short job leases and sweeps while busy."""

    def get_heartbeat_ttl(self, job: Job) -> int:
        """Return the job's lease: until the next monitor tick plus HEARTBEAT_GRACE seconds."""
        if job.timeout and job.timeout > 0:
            # Past its timeout the job is being killed by its own work-horse: keep the grace.
            remaining = max(0, job.timeout - self.current_job_working_time)
            return int(min(remaining, self.job_monitoring_interval)) + HEARTBEAT_GRACE
        return int(self.job_monitoring_interval) + HEARTBEAT_GRACE

    def maintain_heartbeats(self, job: Job) -> None:
        """Renew the leases as RQ does, and sweep abandoned jobs when maintenance is due."""
        try:
            if self.clock is not None:
                self.clock.sync()
            super().maintain_heartbeats(job)
            # RQ runs maintenance only between jobs; a worker busy with an hour-long job would
            # otherwise never sweep the jobs of a worker that died beside it.
            if self.should_run_maintenance_tasks:
                self.clean_registries()  # type: ignore[no-untyped-call]
        except (ConnectionError, TimeoutError, OutOfMemoryError) as exc:
            # The job goes on in the work-horse; the next tick tries again.
            logger.warning("heartbeat of job %s missed, Redis unreachable or full: %s", job.id, exc)


class TrackedSimpleWorker(TrackingMixin, SimpleWorker):
    """RQ's in-process worker, plus index maintenance."""


def wait_for_redis(connection: Redis, give_up_after: float = MAX_STARTUP_WAIT) -> None:
    """Ping Redis until it answers, backing off, so a worker can start before Redis does."""
    delay, deadline = 0.5, time.monotonic() + give_up_after
    while True:
        try:
            connection.ping()
            return
        except (ConnectionError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("Redis not reachable (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def build_worker(
    settings: Settings,
    connection: Redis,
    queue_names: list[str] | None = None,
    **kwargs: Any,
) -> TrackingMixin:
    """Return a worker of the configured class on `queue_names` (default: the configured queue),
    recording into the index."""
    worker_class = TrackedWorker if settings.worker_class == "fork" else TrackedSimpleWorker
    return worker_class(
        queue_names or [settings.queue_name],
        connection=connection,
        settings=settings,
        maintenance_interval=settings.maintenance_interval,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        worker_ttl=WORKER_TTL,
        **kwargs,
    )


def start_repairer(settings: Settings) -> multiprocessing.process.BaseProcess:
    """Start the drift repair loop in a child process of its own (worker/repair.py)."""
    # Spawned, not forked: a fresh interpreter shares no locks or sockets with this one.
    process = multiprocessing.get_context("spawn").Process(
        target=repair.run_forever,
        args=(settings, os.getpid()),
        name="toolkit-jobs repair",
        daemon=True,
    )
    process.start()
    return process


def start_deliverer(settings: Settings) -> multiprocessing.process.BaseProcess:
    """Start the webhook delivery worker in a child process of its own."""
    # A worker of its own, not a second queue of this one: RQ takes a job into its intermediate
    # list (found again should the worker die before the job starts) only when a worker serves
    # one queue; from two queues it pops it, and a worker killed right then would lose it.
    process = multiprocessing.get_context("spawn").Process(
        target=deliver_forever,
        args=(settings, os.getpid()),
        name="toolkit-jobs webhooks",
        # Not a daemon: RQ starts its scheduler as a child process, which a daemon may not have.
        # `run()` stops it; should this process die outright, it stops itself (its maintenance).
        daemon=False,
    )
    process.start()
    return process


def deliver_forever(settings: Settings, parent: int) -> None:
    """Deliver webhooks (the queue "<QUEUE_NAME>:webhooks") while the process `parent` lives."""
    # Until RQ installs its own handlers (in `work()`), a Ctrl-C reaching the whole process group
    # is the parent's to act on; from then on SIGINT or the parent's SIGTERM is RQ's warm
    # shutdown (the try under way ends first).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format)
    connection = connect(settings)
    wait_for_redis(connection)
    worker = build_worker(settings, connection, [keys.webhook_queue_name(settings.queue_name)])
    worker.parent = parent
    _serve(worker, connection, settings)


def run(settings: Settings) -> None:
    """Run a worker, RQ's scheduler, the repair loop and the webhook delivery worker until the
    worker is told to stop."""
    connection = connect(settings)
    wait_for_redis(connection)
    worker = build_worker(settings, connection)
    worker.index.mark()
    worker.repairer = start_repairer(settings)
    worker.deliverer = start_deliverer(settings)
    try:
        _serve(worker, connection, settings)
    finally:
        worker.deliverer.terminate()
        worker.repairer.terminate()
        worker.repairer.join(timeout=5)
        # A try under way ends within three timeouts (worker/webhooks.py).
        worker.deliverer.join(timeout=3 * settings.webhook_timeout_seconds + 5)


def _serve(worker: TrackingMixin, connection: Redis, settings: Settings) -> None:
    worker.clock = RedisClock(connection)
    worker.clock.sync()
    use_redis_time(worker.clock)
    logger.info(
        "worker %s (%s) on %s", worker.name, settings.worker_class, ", ".join(worker.queue_names())
    )
    # RQ's scheduler moves scheduled jobs and retries with an interval to their queue when
    # due; one worker per queue holds its lock, the others stand by.
    worker.work(logging_level=settings.log_level, with_scheduler=True)
