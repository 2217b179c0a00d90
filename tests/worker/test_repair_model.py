"""A model of RQ and the index: the service's classes keep it exact, a repair restores it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest
import redis
from hypothesis import event
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from rq import Queue, SimpleWorker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import BaseWorker

from shared import keys, tasks
from shared.index import StatusIndex
from shared.job import TrackedJob
from shared.queue import QueueFullError, TrackedQueue
from shared.settings import Settings
from shared.tasks import RUNNER
from tests.helpers import RedisServer, index_view, rq_view
from worker.main import build_worker
from worker.repair import repair_pass

# The db of the session's Redis where a copy of the model's db is repaired after each step.
MIRROR_DB = 1
# The lease a dead worker leaves on its job (s): longer than the test, so that only the `sweep`
# rule, with a timestamp past it, fails the job; no live worker's own maintenance does.
DEAD_LEASE = 3600
DEAD_WORKER = "dead-worker"
# What RQ raises when it refuses an operation; it has changed nothing then.
REFUSED = (NoSuchJobError, InvalidJobOperation)

RUN = hypothesis_settings(max_examples=60, stateful_step_count=25, deadline=None)


def assert_repair_is_exact(index: StatusIndex) -> None:
    """Run a repair pass: the index then lists exactly RQ's jobs, and a second pass changes none."""
    # Unpaced: the pacing only spreads a pass out in time, and would only slow the test down.
    repair_pass(index, duty=1.0)
    assert index_view(index.connection) == rq_view(index.connection)
    assert repair_pass(index, duty=1.0).changed == 0


def copy_db(source: redis.Redis, target: redis.Redis, target_db: int) -> None:
    """Make `target` (db `target_db` of the same server) a copy of `source`, TTLs included."""
    target.flushdb()
    with source.pipeline(transaction=False) as pipe:
        for key in source.scan_iter(count=1000):
            pipe.copy(key, key, destination_db=target_db)
        pipe.execute()


def task_of(failing: bool) -> tuple[str, tasks.Payload]:
    """Return the name and payload of a task that fails, or of one that succeeds."""
    return ("fail", {"message": "on purpose"}) if failing else ("echo", {})


def no_command_channel(worker: BaseWorker) -> None:
    """Subscribe to nothing: no command (stop, kill) is ever sent to these in-process workers."""


class RepairModel(RuleBasedStateMachine):
    """Jobs moved by RQ's plain classes or the service's, by Redis' expiry and by dead workers."""

    jobs = Bundle("jobs")

    def __init__(
        self, conn: redis.Redis, index: StatusIndex, settings: Settings, mirror: redis.Redis
    ) -> None:
        super().__init__()
        self.conn = conn
        self.index = index
        self.settings = replace(settings, worker_class="simple")
        self.queue_name = settings.queue_name
        self.queue_key = keys.rq_queue_key(settings.queue_name)
        self.mirror = mirror
        self.mirror_index = StatusIndex(mirror, index.retention_seconds)
        # Every job a plain class or an expiry may have moved since the last repair, and that no
        # class of the service has written since: the ones named, popped, swept or emptied.
        # Empty whenever only the service's classes acted since the last repair.
        self.drifted: set[str] = set()
        self.enqueued = 0

    def acted(self, plain: bool, touched: Iterable[str] = (), written: Iterable[str] = ()) -> None:
        """Note the ids a class popped or swept (`touched`) and the jobs it wrote (`written`)."""
        if plain:
            self.drifted.update(touched, written)
        else:
            # The record script moves a job's entry from wherever it was: drifted or not, a job
            # the service's classes wrote is exact again. Not so an id only touched, whose hash
            # expired: nothing writes it.
            self.drifted.difference_update(written)

    def new_id(self) -> str:
        """Return the next job id: by count, not random, so that a replay draws the same ids."""
        self.enqueued += 1
        return f"job-{self.enqueued}"

    def waiting(self) -> set[str]:
        """Return the ids in RQ's queue list."""
        return {raw.decode() for raw in self.conn.lrange(self.queue_key, 0, -1)}

    def existing(self, job_ids: Iterable[str]) -> set[str]:
        """Return those of `job_ids` whose job hash RQ still holds."""
        return {job_id for job_id in job_ids if self.conn.exists(keys.rq_job_key(job_id))}

    def failed(self) -> list[str]:
        """Return the ids in RQ's failed registry."""
        return FailedJobRegistry(self.queue_name, connection=self.conn).get_job_ids(cleanup=False)

    def abandoned(self) -> list[str]:
        """Return the ids in RQ's started registry."""
        registry = StartedJobRegistry(self.queue_name, connection=self.conn)
        return registry.get_job_ids(cleanup=False)

    def queue(self, plain: bool) -> Queue:
        """Return the queue through RQ's plain class or the service's."""
        return (Queue if plain else TrackedQueue)(self.queue_name, connection=self.conn)

    @initialize()
    def start_empty(self) -> None:
        """Start each example on an empty db."""
        self.conn.flushdb()

    @rule(target=jobs, plain=st.booleans(), fails=st.lists(st.booleans(), min_size=1, max_size=3))
    def enqueue(self, plain: bool, fails: list[bool]) -> MultipleResults[str]:
        """Enqueue a few jobs, each an echo or a fail."""
        queue, job_ids = self.queue(plain), []
        for failing in fails:
            task, payload = task_of(failing)
            job_id = self.new_id()
            if isinstance(queue, TrackedQueue):
                queue.enqueue_task(task, payload, job_id=job_id)
            else:
                queue.enqueue(RUNNER, task, payload, job_id=job_id)
            job_ids.append(job_id)
        self.acted(plain, written=job_ids)
        return multiple(*job_ids)

    @rule(target=jobs, failing=st.booleans(), limit=st.integers(min_value=1, max_value=4))
    def submit(self, failing: bool, limit: int) -> MultipleResults[str]:
        """Enqueue a job as the API does, unless `limit` jobs wait (RQ has no such enqueue)."""
        queue = TrackedQueue(self.queue_name, connection=self.conn)
        task, payload = task_of(failing)
        job = queue.create_job(RUNNER, args=(task, payload), job_id=self.new_id())
        try:
            queue.enqueue_bounded(job, limit)
        except QueueFullError:
            # Refused, the job must leave no trace: the invariants look at every id.
            event("submit refused: queue full")
            return multiple()
        return multiple(job.id)

    @precondition(lambda self: self.waiting())
    @rule(plain=st.booleans())
    def run_next(self, plain: bool) -> None:
        """Run the next waiting job with an in-process worker."""
        before = self.waiting()
        worker = (
            SimpleWorker([self.queue_name], connection=self.conn)
            if plain
            else build_worker(self.settings, self.conn)
        )
        worker.work(burst=True, max_jobs=1, with_scheduler=False)
        # The worker pops ids until one names a job, which it runs; expired ids it drops.
        popped = before - self.waiting()
        self.acted(plain, popped, written=self.existing(popped))

    @precondition(lambda self: self.waiting())
    @rule(plain=st.booleans())
    def abandon(self, plain: bool) -> None:
        """Take the next waiting job as a worker does, then die: started, never run nor ended."""
        before = self.waiting()
        queue = self.queue(plain)
        taken = type(queue).dequeue_any([queue], None, connection=self.conn)
        self.acted(plain, before - self.waiting())
        if taken is None:
            event("abandon: only expired ids were waiting")
            return
        job = taken[0]
        # What the worker's prepare_execution and prepare_job_execution leave behind.
        with self.conn.pipeline() as pipe:
            Execution.create(job, DEAD_LEASE, pipe, worker_name=DEAD_WORKER)
            job.prepare_for_execution(DEAD_WORKER, pipe)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.execute()
        self.acted(plain, written=[job.id])

    @precondition(lambda self: self.abandoned())
    @rule(plain=st.booleans())
    def sweep(self, plain: bool) -> None:
        """Fail every abandoned job, as a worker's maintenance does once their lease ran out."""
        job_class = Job if plain else TrackedJob
        registry = StartedJobRegistry(self.queue_name, connection=self.conn, job_class=job_class)
        abandoned = self.abandoned()
        # RQ skips the ids whose hash expired; it fails the others.
        written = self.existing(abandoned)
        registry.cleanup(timestamp=time.time() + 2 * DEAD_LEASE)
        self.acted(plain, abandoned, written)

    @rule(plain=st.booleans(), job_id=jobs)
    def cancel(self, plain: bool, job_id: str) -> None:
        """Cancel a job, unless RQ refuses."""
        try:
            (Job if plain else TrackedJob).fetch(job_id, connection=self.conn).cancel()
        except REFUSED:
            event("cancel refused")
            return
        self.acted(plain, written=[job_id])

    @rule(plain=st.booleans(), job_id=jobs)
    def delete(self, plain: bool, job_id: str) -> None:
        """Delete a job, unless RQ no longer has it."""
        try:
            (Job if plain else TrackedJob).fetch(job_id, connection=self.conn).delete()
        except REFUSED:
            event("delete refused")
            return
        self.acted(plain, written=[job_id])

    @precondition(lambda self: self.failed())
    @rule(plain=st.booleans(), data=st.data())
    def requeue(self, plain: bool, data: st.DataObject) -> None:
        """Requeue a failed job, unless RQ refuses (its hash expired)."""
        job_id = data.draw(st.sampled_from(sorted(self.failed())), label="job_id")
        job_class = Job if plain else TrackedJob
        registry = FailedJobRegistry(self.queue_name, connection=self.conn, job_class=job_class)
        try:
            registry.requeue(job_id)
        except REFUSED:
            event("requeue refused")
            return
        self.acted(plain, written=[job_id])

    @precondition(lambda self: self.waiting())
    @rule(plain=st.booleans())
    def empty(self, plain: bool) -> None:
        """Empty the queue."""
        before = self.waiting()
        self.queue(plain).empty()
        # The service's empty() removes the index entry of every id it pops, expired or not.
        self.acted(plain, written=before)

    @rule(job_id=jobs)
    def expire(self, job_id: str) -> None:
        """Let the job's hash expire, as its TTL would: RQ's lists and registries keep its id."""
        if self.conn.delete(keys.rq_job_key(job_id)):
            self.drifted.add(job_id)

    # Without drift the invariants already say all a repair here would: the index is exact.
    @precondition(lambda self: self.drifted)
    @rule()
    def repair(self) -> None:
        """Repair the index: it is exact again, and no job counts as drifted any more."""
        assert_repair_is_exact(self.index)
        self.drifted.clear()

    @invariant()
    def service_classes_keep_the_index_exact(self) -> None:
        """Unrepaired, each job outside `drifted` has RQ's status in the index, or is in neither."""
        indexed, held = index_view(self.conn), rq_view(self.conn)
        exact = (indexed.keys() | held.keys()) - self.drifted
        assert {job_id: indexed.get(job_id) for job_id in exact} == {
            job_id: held.get(job_id) for job_id in exact
        }

    @invariant()
    def a_repair_pass_makes_the_index_exact(self) -> None:
        """Repairing a copy of the db makes the copy's index exact; the drift here accumulates."""
        copy_db(self.conn, self.mirror, MIRROR_DB)
        assert_repair_is_exact(self.mirror_index)


@pytest.fixture
def mirror(conn: redis.Redis, redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Return a client of the mirror db of the session's Redis (flushed with `conn`'s FLUSHALL)."""
    assert conn.connection_pool.connection_kwargs.get("db", 0) != MIRROR_DB
    client = redis_server.client(db=MIRROR_DB)
    yield client
    client.close()


def test_the_service_keeps_the_index_exact_and_a_repair_restores_it(
    conn: redis.Redis,
    index: StatusIndex,
    settings: Settings,
    mirror: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plain and tracked RQ operations mixed: tracked jobs stay exact, a repair makes all exact."""
    tasks.load(settings.task_modules)
    # RQ's teardown unsubscribes before stopping the channel's thread; when the thread wins the
    # race, the join waits out its one-second timeout: a run in five, most of the test's time.
    monkeypatch.setattr(BaseWorker, "subscribe", no_command_channel)
    run_state_machine_as_test(lambda: RepairModel(conn, index, settings, mirror), settings=RUN)
