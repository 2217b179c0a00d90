"""Positions of the index on the session's real Redis: unique and increasing whoever records
(concurrent recorders, a repair pass), the index clock holding the latest, and a read's fence
below every change recorded after it (docs/changes-feed.md, "What a client that follows
cursors sees")."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from rq import Queue
from rq.job import JobStatus

from shared import keys
from shared.index import Start, StatusIndex
from shared.queue import TrackedQueue
from shared.redis import MICROS, connect, redis_time_micros
from shared.settings import Settings
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import index_view, indexed, record
from worker.repair import repair_pass

THREADS = 4
PER_THREAD = 500
RQ_STATUSES = [
    JobStatus.QUEUED,
    JobStatus.STARTED,
    JobStatus.FINISHED,
    JobStatus.FAILED,
    JobStatus.CANCELED,
]


def scores(conn: redis.Redis) -> dict[str, int]:
    """Return every indexed job's position (µs), read from the five sets."""
    found: dict[str, int] = {}
    for status in Status:
        for member, score in conn.zrange(keys.status_index_key(status), 0, -1, withscores=True):
            assert member.decode() not in found, f"{member!r} is in two status sets"
            found[member.decode()] = int(score)
    return found


def clock(conn: redis.Redis) -> int:
    """Return the index clock: the latest position given."""
    value = conn.get(keys.clock_key())
    assert value is not None
    return int(value)


@pytest.fixture
def connections(settings: Settings) -> Iterator[Callable[[], redis.Redis]]:
    """Return a factory of Redis connections of their own (one per thread); all are closed
    after the test."""
    made: list[redis.Redis] = []
    lock = threading.Lock()

    def make() -> redis.Redis:
        connection = connect(settings)
        with lock:
            made.append(connection)
        return connection

    yield make
    for connection in made:
        connection.close()


def record_many(
    connection: redis.Redis, retention: int, prefix: str, count: int
) -> list[tuple[str, int]]:
    """Record `count` distinct jobs through the record script, one transaction each; return each
    job with the position it got, read right after its record."""
    index = StatusIndex(connection, retention)
    placed = []
    for n in range(count):
        job_id = f"{prefix}-{n}"
        record(index, job_id, RQ_STATUSES[n % len(RQ_STATUSES)])
        found = indexed(connection, job_id)
        assert found is not None
        placed.append((job_id, found[1]))
    return placed


def record_concurrently(
    connections: Callable[[], redis.Redis], settings: Settings
) -> list[list[tuple[str, int]]]:
    """Record THREADS x PER_THREAD distinct jobs from THREADS threads, each on a connection of
    its own; return what each thread placed, in its order."""
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [
            pool.submit(record_many, connections(), settings.retention_seconds, f"t{t}", PER_THREAD)
            for t in range(THREADS)
        ]
        return [future.result(timeout=60) for future in futures]


def test_concurrent_recorders_get_unique_increasing_positions(
    conn: redis.Redis, settings: Settings, connections: Callable[[], redis.Redis]
) -> None:
    """4 threads x 500 records of distinct jobs: every position distinct, each thread's
    increasing, and the index clock equal to the highest."""
    placed = record_concurrently(connections, settings)
    for mine in placed:
        positions = [p for _, p in mine]
        assert positions == sorted(set(positions))
    found = scores(conn)
    assert len(found) == THREADS * PER_THREAD
    assert len(set(found.values())) == len(found)
    assert clock(conn) == max(found.values())
    assert found == {job_id: p for mine in placed for job_id, p in mine}


def test_concurrent_recorders_behind_the_clock_take_its_next_positions(
    conn: redis.Redis, settings: Settings, connections: Callable[[], redis.Redis]
) -> None:
    """With the index clock ahead of Redis time (a clock step back), concurrent records take
    exactly the clock's next positions, one each, none twice."""
    ahead = redis_time_micros(conn) + 3_600 * MICROS
    conn.set(keys.clock_key(), ahead)
    record_concurrently(connections, settings)
    total = THREADS * PER_THREAD
    assert sorted(scores(conn).values()) == list(range(ahead + 1, ahead + total + 1))
    assert clock(conn) == ahead + total


def test_a_repair_pass_places_each_entry_at_a_position_of_its_own_above_the_clock(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue
) -> None:
    """A repair pass that adds and moves hundreds of entries, many in one script call, gives
    each a distinct position above the clock it found, and leaves the clock at the highest."""
    kept = [queue.enqueue_task("echo", {"n": n}).id for n in range(5)]
    moved = [queue.enqueue_task("echo", {"n": n}).id for n in range(150)]
    for job_id in moved:
        # Behind the index's back, as a plain RQ class would.
        conn.hset(keys.rq_job_key(job_id), "status", JobStatus.FINISHED.value)
    plain = Queue("other", connection=conn)
    added = [plain.enqueue(RUNNER, "echo", {"n": n}).id for n in range(300)]
    before = scores(conn)
    found_clock = clock(conn)
    assert max(before.values()) == found_clock

    report = repair_pass(index, batch=500, duty=1.0)

    assert report.counts == {"removed": 0, "moved": len(moved), "added": len(added)}
    after = scores(conn)
    assert set(after) == {*kept, *moved, *added}
    assert all(after[job_id] == before[job_id] for job_id in kept)
    repaired = [after[job_id] for job_id in (*moved, *added)]
    assert all(p > found_clock for p in repaired)
    assert len(set(after.values())) == len(after)
    assert clock(conn) == max(after.values())
    assert {index_view(conn)[job_id] for job_id in moved} == {Status.DONE}


def test_a_repair_pass_behind_the_clock_takes_its_next_positions(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """With the clock ahead of Redis time, a repair pass's additions take the clock's next
    positions, one each."""
    plain = Queue("default", connection=conn)
    added = [plain.enqueue(RUNNER, "echo", {"n": n}).id for n in range(200)]
    ahead = redis_time_micros(conn) + 3_600 * MICROS
    conn.set(keys.clock_key(), ahead)
    assert repair_pass(index, batch=500, duty=1.0).counts["added"] == len(added)
    assert sorted(scores(conn).values()) == list(range(ahead + 1, ahead + len(added) + 1))
    assert clock(conn) == ahead + len(added)


def test_a_change_recorded_after_a_read_lies_above_its_fence(
    conn: redis.Redis, index: StatusIndex, settings: Settings
) -> None:
    """Read after read (pages and windows alike), a change recorded before the read lies at or
    below its fence, and one recorded right after it lies above."""
    index.mark()
    fence = 0
    for n in range(300):
        before = f"before-{n}"
        record(index, before, RQ_STATUSES[n % len(RQ_STATUSES)])
        if n % 2:
            page = index.page(Start(after=fence), settings.queue_name, 1000)
            fence, ids = page.fence, [job_id for job_id, _ in page.ids]
            assert page.end is None
        else:
            window = index.window(0, settings.queue_name, after=fence)
            fence, ids = window.fence, [job_id for _, members in window.ids for job_id in members]
            assert window.complete
        after = f"after-{n}"
        record(index, after, JobStatus.QUEUED)
        found_before, found_after = indexed(conn, before), indexed(conn, after)
        assert found_before is not None and found_after is not None
        assert found_before[1] <= fence < found_after[1], n
        # The read listed the change before it, none of those after it.
        assert before.encode() in ids
        assert after.encode() not in ids


def test_a_reader_following_pages_while_jobs_change_lists_each_change_once(
    conn: redis.Redis,
    index: StatusIndex,
    settings: Settings,
    connections: Callable[[], redis.Redis],
) -> None:
    """A reader following pages (end, then fence) while another connection records lists each
    job recorded once exactly once, never a job more often than it was recorded, and every
    job's latest status last."""
    index.mark()
    done = threading.Event()
    records: Counter[str] = Counter()

    def write() -> None:
        writer = StatusIndex(connections(), settings.retention_seconds)
        try:
            for n in range(1_200):
                record(writer, f"job-{n}", JobStatus.QUEUED)
                records[f"job-{n}"] += 1
                if n % 4 == 3:
                    # A job recorded a while ago changes again.
                    again = f"job-{n // 2}"
                    record(writer, again, RQ_STATUSES[n % len(RQ_STATUSES)])
                    records[again] += 1
        finally:
            done.set()

    listed: Counter[str] = Counter()
    last: dict[str, Status] = {}
    after, limit, reads = 0, 1, 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        writing = pool.submit(write)
        while True:
            finished = done.is_set()
            page = index.page(Start(after=after), settings.queue_name, limit)
            reads += 1
            limit = limit % 37 + 1
            for member, status in page.ids:
                listed[member.decode()] += 1
                last[member.decode()] = status
            after = page.fence if page.end is None else page.end
            # Done once a page read after the writer's end reached its fence.
            if finished and page.end is None:
                break
            assert reads < 100_000, "the reader never caught up"
        writing.result(timeout=60)
    assert set(listed) == set(records)
    assert all(listed[job_id] <= records[job_id] for job_id in records)
    assert all(listed[job_id] == 1 for job_id, n in records.items() if n == 1)
    assert last == index_view(conn)
