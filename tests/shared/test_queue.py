"""The tracked queue against real Redis: the bounded enqueue's gate, `empty()`, its job class."""

from __future__ import annotations

import threading

import pytest
import redis
from rq import Queue
from rq.job import Job

from shared import keys, tasks
from shared.index import parse_transitions
from shared.job import TrackedJob, tracked_subclass
from shared.queue import EMPTY_BATCH, GATE_LUA, QueueFullError, TrackedQueue
from shared.redis import connect
from shared.settings import Settings
from shared.status import Status
from tests.helpers import indexed


def new_job(queue: Queue) -> Job:
    """Return an echo job created (not yet enqueued) on `queue`."""
    return queue.create_job(tasks.RUNNER, args=("echo", {}))


def waiting(conn: redis.Redis) -> list[str]:
    """Return the ids waiting in the default queue's list, oldest first."""
    return [item.decode() for item in conn.lrange(keys.rq_queue_key("default"), 0, -1)]


def transitions(conn: redis.Redis) -> dict[tuple[str, str], int]:
    """Return the transition counts."""
    return parse_transitions(conn.hgetall(keys.transitions_key()))


@pytest.mark.parametrize(("waiting_before", "limit"), [(0, 1), (2, 3), (9, 10)])
def test_room_below_the_limit_enqueues(
    conn: redis.Redis, queue: TrackedQueue, waiting_before: int, limit: int
) -> None:
    """Below the limit the job joins, is indexed queued, and the new list length is returned."""
    for _ in range(waiting_before):
        conn.rpush(queue.key, "filler")
    job = new_job(queue)
    assert queue.enqueue_bounded(job, limit) == waiting_before + 1
    assert waiting(conn)[-1] == job.id
    found = indexed(conn, job.id)
    assert found is not None and found[0] is Status.QUEUED
    assert transitions(conn) == {("new", "queued"): 1}


@pytest.mark.parametrize(("waiting_before", "limit"), [(1, 1), (3, 3), (4, 3)])
@pytest.mark.parametrize("at_front", [False, True])
def test_a_queue_at_its_limit_refuses_and_leaves_no_trace(
    conn: redis.Redis, queue: TrackedQueue, waiting_before: int, limit: int, at_front: bool
) -> None:
    """At or past the limit: QueueFullError with the length found; no job, entry or count."""
    for number in range(waiting_before):
        conn.rpush(queue.key, f"filler-{number}")
    job = new_job(queue)
    with pytest.raises(QueueFullError, match=f"^queue holds {waiting_before} waiting jobs$") as e:
        queue.enqueue_bounded(job, limit, at_front=at_front)
    assert e.value.length == waiting_before
    assert waiting(conn) == [f"filler-{number}" for number in range(waiting_before)]
    assert not conn.exists(keys.rq_job_key(job.id))
    assert indexed(conn, job.id) is None
    assert transitions(conn) == {}


def test_a_refusal_keeps_the_counts_of_earlier_jobs(conn: redis.Redis, queue: TrackedQueue) -> None:
    """A refused job takes back only its own "new:queued" count, not the accepted ones'."""
    accepted = new_job(queue)
    queue.enqueue_bounded(accepted, 1)
    with pytest.raises(QueueFullError):
        queue.enqueue_bounded(new_job(queue), 1)
    assert transitions(conn) == {("new", "queued"): 1}
    assert waiting(conn) == [accepted.id]


def test_at_front_joins_the_head(conn: redis.Redis, queue: TrackedQueue) -> None:
    """at_front puts the job first, under the limit as well."""
    conn.rpush(queue.key, "filler")
    job = new_job(queue)
    assert queue.enqueue_bounded(job, 5, at_front=True) == 2
    assert waiting(conn) == [job.id, "filler"]


def test_no_limit_enqueues_whatever_the_length(conn: redis.Redis, queue: TrackedQueue) -> None:
    """A limit of 0 means no limit: the job joins a long queue; the new length is returned."""
    for _ in range(50):
        conn.rpush(queue.key, "filler")
    job = new_job(queue)
    assert queue.enqueue_bounded(job, 0) == 51
    assert waiting(conn)[-1] == job.id


def test_the_limit_is_exact_under_concurrency(
    settings: Settings, conn: redis.Redis, queue: TrackedQueue
) -> None:
    """16 submitters racing for 25 places: exactly 25 get in, the others leave nothing behind."""
    limit, per_thread, threads = 25, 10, 16
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def submit() -> None:
        own = TrackedQueue(queue.name, connection=connect(settings))
        start.wait()
        for _ in range(per_thread):
            job = new_job(own)
            try:
                own.enqueue_bounded(job, limit)
            except QueueFullError:
                with lock:
                    refused.append(job.id)
            else:
                with lock:
                    accepted.append(job.id)
        own.connection.close()

    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert len(accepted) == limit
    assert len(refused) == threads * per_thread - limit
    assert sorted(waiting(conn)) == sorted(accepted)
    assert conn.zcard(keys.status_index_key(Status.QUEUED)) == limit
    assert transitions(conn) == {("new", "queued"): limit}
    assert not any(conn.exists(keys.rq_job_key(job_id)) for job_id in refused)


def test_empty_removes_waiting_jobs_from_rq_and_the_index(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """empty() deletes every waiting job, in more than one batch, and their index entries."""
    jobs = [queue.enqueue_job(new_job(queue)) for _ in range(EMPTY_BATCH + 3)]
    elsewhere = TrackedQueue("other", connection=conn).enqueue_job(new_job(queue))
    assert queue.empty() == EMPTY_BATCH + 3
    assert waiting(conn) == []
    assert not any(conn.exists(job.key) for job in jobs)
    assert all(indexed(conn, job.id) is None for job in jobs)
    found = indexed(conn, elsewhere.id)
    assert found is not None and found[0] is Status.QUEUED


def test_an_empty_queue_empties_to_zero(queue: TrackedQueue) -> None:
    """empty() of an empty queue removes nothing and says so."""
    assert queue.empty() == 0


@pytest.mark.parametrize("given", [None, Job, "rq.job.Job"])
def test_a_tracked_queue_keeps_tracked_jobs(conn: redis.Redis, given: object) -> None:
    """Whatever job class RQ's tools hand it, a tracked queue makes tracked jobs."""
    extra = {} if given is None else {"job_class": given}
    assert TrackedQueue("default", connection=conn, **extra).job_class is TrackedJob


def test_enqueue_task_runs_the_catalog_check(conn: redis.Redis, queue: TrackedQueue) -> None:
    """enqueue_task enqueues the runner with the task's name and checked payload, indexed."""
    job = queue.enqueue_task("echo", {"a": 1}, meta={"client_id": "x"}, result_ttl=60)
    assert (job.func_name, job.args) == (tasks.RUNNER, ("echo", {"a": 1}))
    assert job.meta == {"task": "echo", "progress": 0, "client_id": "x"}
    assert job.result_ttl == 60
    assert queue.enqueue_task("echo", {}).meta == {"task": "echo", "progress": 0}
    found = indexed(conn, job.id)
    assert found is not None and found[0] is Status.QUEUED
    with pytest.raises(tasks.UnknownTaskError):
        queue.enqueue_task("no-such-task", {})


def test_a_bounded_enqueue_refuses_jobs_it_could_not_take_back(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """A job with dependencies, or on a synchronous queue, is refused before anything is sent."""
    parent = queue.enqueue_task("echo", {})
    child = queue.create_job(tasks.RUNNER, args=("echo", {}), depends_on=parent)
    message = "^a bounded enqueue takes a new job without dependencies, run async$"
    with pytest.raises(ValueError, match=message):
        queue.enqueue_bounded(child, 1)
    sync = TrackedQueue("default", connection=conn, is_async=False)
    with pytest.raises(ValueError, match=message):
        sync.enqueue_bounded(new_job(sync), 1)
    assert waiting(conn) == [parent.id]


def test_the_gate_takes_back_only_the_job_it_was_given(conn: redis.Redis) -> None:
    """Over the limit, a gate whose job is not at the pushed end fails and removes nothing."""
    conn.rpush(keys.rq_queue_key("default"), "other-1", "other-2")
    gate_keys = [
        keys.rq_queue_key("default"),
        keys.rq_job_key("mine"),
        keys.transitions_key(),
        keys.status_index_key(Status.QUEUED),
        "rq:wip:default",
    ]
    with pytest.raises(redis.ResponseError, match="did not push job mine"):
        conn.eval(GATE_LUA, len(gate_keys), *gate_keys, "mine", 1, 0, 0, 0)
    assert waiting(conn) == ["other-1", "other-2"]


class CustomJob(TrackedJob):
    """A user's own subclass of the tracked job class."""


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("shared.job.TrackedJob", TrackedJob),
        (CustomJob, CustomJob),
        (f"{__name__}.CustomJob", CustomJob),
        ("rq.job.Job", TrackedJob),
    ],
)
def test_tracked_subclass_keeps_subclasses_named_or_given(given: object, expected: type) -> None:
    """A class or dotted name of a tracked subclass is kept; anything else gives way."""
    assert tracked_subclass(given, TrackedJob) is expected  # type: ignore[arg-type]


def test_enqueue_task_passes_enqueue_options_on(conn: redis.Redis, queue: TrackedQueue) -> None:
    """at_front and pipeline reach RQ's enqueue, not the job: the job joins the head, in EXEC."""
    first = queue.enqueue_task("echo", {})
    with conn.pipeline() as pipe:
        second = queue.enqueue_task("echo", {}, at_front=True, pipeline=pipe)
        assert waiting(conn) == [first.id]
        pipe.execute()
    assert waiting(conn) == [second.id, first.id]
