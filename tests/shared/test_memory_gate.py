"""A Redis with a maxmemory: the gate keeps room for accepted jobs' results; reads go on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from rq.job import Job, JobStatus

from shared import keys
from shared.index import Facets, Start, StatusIndex, parse_transitions
from shared.queue import MemoryBudget, MemoryFullError, QueueFullError, TrackedQueue
from shared.redis import redis_time_micros
from shared.status import Status
from tests.helpers import BUDGET, RESULT_BYTES, index_view, queue_length, record, room_for


@pytest.fixture
def limit_memory(conn: redis.Redis) -> Iterator[None]:
    """Let a test set the session Redis's maxmemory; put it back to none afterwards."""
    yield
    conn.config_set("maxmemory", 0)


def new_job(queue: TrackedQueue) -> Job:
    return queue.create_job("shared.tasks.run_task", args=("echo", {"n": 1}))


def fill(queue: TrackedQueue, budget: MemoryBudget | None = BUDGET, limit: int = 0) -> int:
    """Enqueue until the gate refuses for memory; return how many it accepted."""
    for accepted in range(100):
        try:
            queue.enqueue_bounded(new_job(queue), limit, budget)
        except MemoryFullError as full:
            assert full.length == accepted
            assert str(full) == f"Redis is too full to accept a job ({accepted} waiting)"
            return accepted
    raise AssertionError("the gate never refused")


@pytest.mark.usefixtures("limit_memory")
def test_the_gate_accepts_exactly_the_jobs_whose_results_fit(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """Room for 3.5 results under the percent: 3 jobs in, the 4th refused without a trace."""
    room_for(conn, 3.5)
    assert fill(queue) == 3
    assert queue_length(conn) == 3
    assert len(conn.keys("rq:job:*")) == 3
    assert list(index_view(conn).values()) == [Status.QUEUED] * 3
    transitions = parse_transitions(conn.hgetall(keys.transitions_key()))
    assert transitions == {("new", "queued"): 3}


@pytest.mark.usefixtures("limit_memory")
def test_running_jobs_keep_their_room(conn: redis.Redis, queue: TrackedQueue) -> None:
    """A job in the queue's running registry reserves a result too: one fewer gets in."""
    conn.zadd(queue.started_job_registry.key, {"running-elsewhere": 1})
    room_for(conn, 3.5)
    assert fill(queue) == 2


@pytest.mark.usefixtures("limit_memory")
def test_a_bigger_reservation_admits_fewer(conn: redis.Redis, queue: TrackedQueue) -> None:
    """Twice the bytes per result, half the jobs: the reservation, not the jobs, decides."""
    room_for(conn, 4.5)
    assert fill(queue, MemoryBudget(percent=80, result_bytes=2 * RESULT_BYTES)) == 2


@pytest.mark.usefixtures("limit_memory")
def test_the_percent_is_of_maxmemory(conn: redis.Redis, queue: TrackedQueue) -> None:
    """The same maxmemory admits more under a higher percent."""
    room_for(conn, 3.5)
    assert fill(queue, MemoryBudget(percent=99, result_bytes=RESULT_BYTES)) > 3


@pytest.mark.parametrize(
    "budget", [None, MemoryBudget(percent=0, result_bytes=RESULT_BYTES)], ids=["none", "zero"]
)
@pytest.mark.usefixtures("limit_memory")
def test_no_budget_means_no_memory_check(
    conn: redis.Redis, queue: TrackedQueue, budget: MemoryBudget | None
) -> None:
    """Without a budget (or at 0 percent) the gate never refuses for memory, limit or none."""
    room_for(conn, 0.5)
    for limit in (0, 0, 10, 10, 10):
        queue.enqueue_bounded(new_job(queue), limit, budget)
    assert queue_length(conn) == 5


def test_without_maxmemory_nothing_is_refused(conn: redis.Redis, queue: TrackedQueue) -> None:
    """A Redis with no maxmemory is never judged full (nothing to measure against)."""
    assert int(conn.info("memory")["maxmemory"]) == 0
    for _ in range(5):
        queue.enqueue_bounded(new_job(queue), 0, MemoryBudget(percent=1, result_bytes=10**12))
    assert queue_length(conn) == 5


@pytest.mark.usefixtures("limit_memory")
def test_a_full_queue_is_refused_as_full_before_memory(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """Past MAX_QUEUE_LENGTH the refusal is QueueFullError, whatever the memory says."""
    queue.enqueue_bounded(new_job(queue), 1, BUDGET)
    room_for(conn, 0.5)
    with pytest.raises(QueueFullError):
        queue.enqueue_bounded(new_job(queue), 1, BUDGET)
    with pytest.raises(MemoryFullError):
        queue.enqueue_bounded(new_job(queue), 5, BUDGET)
    assert queue_length(conn) == 1


@pytest.mark.parametrize(
    ("used", "maxmemory", "unfinished", "admitted"),
    [
        (0, 0, 10**6, True),  # no maxmemory: nothing to protect
        (70, 100, 0, False),  # 70 + 0 * 10 = 70 >= 70
        (59, 100, 1, True),  # 59 + 10 = 69 < 70
        (60, 100, 1, False),  # 60 + 10 = 70 >= 70
        (0, 100, 7, False),  # results alone fill the 70
        (0, 100, 6, True),
        (694, 1000, 0, True),  # 69,400 < 70,000: the percent is exact, no rounding
        (700, 1000, 0, False),
    ],
)
def test_admits_is_the_gates_rule(
    used: int, maxmemory: int, unfinished: int, admitted: bool
) -> None:
    """admits: used plus a result per unfinished job must stay under the percent of maxmemory."""
    budget = MemoryBudget(percent=70, result_bytes=10)
    assert budget.admits(used, maxmemory, unfinished) is admitted


def test_a_zero_percent_budget_admits_everything() -> None:
    """percent 0 turns the check off."""
    assert MemoryBudget(percent=0, result_bytes=10).admits(100, 100, 100)


def test_a_full_redis_still_answers_windows(conn: redis.Redis, index: StatusIndex) -> None:
    """Over maxmemory Redis refuses a MULTI, reads included: the window is read all the same."""
    for n in range(30):
        record(index, f"job-{n}", JobStatus.FINISHED if n % 2 else JobStatus.QUEUED)
    before = index.window_ids(600, "default")
    conn.config_set("maxmemory", 1)
    try:
        with (
            pytest.raises(redis.exceptions.OutOfMemoryError),
            conn.pipeline(transaction=True) as pipe,
        ):
            pipe.zcard(keys.status_index_key(Status.DONE))
            pipe.execute()
        assert index.window_ids(600, "default") == before
        streamed = index.window(600, "default", batch=4)
        assert not streamed.complete
        assert sorted(m for batch in streamed.rest for _, ms in batch for m in ms) == sorted(
            m for _, ms in before.ids for m in ms
        )
    finally:
        conn.config_set("maxmemory", 0)


def test_a_full_redis_still_answers_pages(conn: redis.Redis, index: StatusIndex) -> None:
    """Over maxmemory a page is read all the same, counts, filters and a position several old
    entries share included; the fence is then not recorded, and the clock stays put."""
    for n in range(6):
        record(index, f"job-{n}", JobStatus.FINISHED)
    # Three entries at one score, as a repair step wrote them before the index clock.
    shared_score = redis_time_micros(conn) - 1_000_000
    conn.zadd(
        keys.status_index_key(Status.FAILED),
        dict.fromkeys(("old-a", "old-b", "old-c"), shared_score),
    )
    clock = conn.get(keys.clock_key())
    conn.config_set("maxmemory", 1)
    try:
        first = index.page(Start(seconds=600), "default", 2, counts=True)
        assert conn.get(keys.clock_key()) == clock
        assert [m for m, _ in first.ids] == [b"old-a", b"old-b", b"old-c"]
        assert first.counts == {
            Status.QUEUED: 0,
            Status.RUNNING: 0,
            Status.DONE: 6,
            Status.FAILED: 3,
            Status.CANCELED: 0,
        }
        assert first.end == shared_score
        rest = index.page(Start(after=first.end), "default", 10)
        assert [m for m, _ in rest.ids] == [f"job-{n}".encode() for n in range(6)]
        assert rest.end is None
        assert (
            index.page(Start(seconds=600), "default", 5, facets=Facets(queue="default")).ids == []
        )
    finally:
        conn.config_set("maxmemory", 0)


def test_over_maxmemory_reads_keep_the_queue_length_and_the_counts_asked_for(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """Over maxmemory (the read script refused, the fence unrecorded) a window and a page still
    say how many jobs wait in the queue, and a page counts from the start it is given."""
    for n in range(4):
        record(index, f"job-{n}", JobStatus.FINISHED)
    conn.rpush(keys.rq_queue_key("default"), "waiting-1", "waiting-2")
    second = int(conn.zscore(keys.status_index_key(Status.DONE), "job-1") or 0)
    conn.config_set("maxmemory", 1)
    try:
        window = index.window(600, "default", counts=True)
        assert window.queue_length == 2
        assert window.counts is not None and window.counts[Status.DONE] == 4
        page = index.page(Start(seconds=600), "default", 10, counts=True, counted_from=second)
        assert page.queue_length == 2
        assert len(page.ids) == 4
        assert page.counts is not None and page.counts[Status.DONE] == 2
    finally:
        conn.config_set("maxmemory", 0)
