"""Reading a window in batches: the same answer as one read, each job at most once, every
unchanged job exactly once, on the session's real Redis."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq.job import JobStatus

from shared import index as index_module
from shared import keys
from shared.index import STATUSES, Batch, StatusIndex, Window
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from tests.helpers import record

# Wider than every planted entry's age; within the test retention.
SINCE = 3600
RQ_STATUS = {
    Status.QUEUED: JobStatus.QUEUED,
    Status.RUNNING: JobStatus.STARTED,
    Status.DONE: JobStatus.FINISHED,
    Status.FAILED: JobStatus.FAILED,
    Status.CANCELED: JobStatus.CANCELED,
}


def plant(conn: redis.Redis, entries: dict[str, tuple[Status, int]]) -> None:
    """Put each job in its status set with its score (µs), in one pipeline, and mark the index."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id, (status, score) in entries.items():
            pipe.zadd(keys.status_index_key(status), {job_id: score})
        pipe.hset(keys.marker_key(), "schema", keys.SCHEMA_VERSION)
        pipe.execute()


def spread(conn: redis.Redis, count: int, per_score: int) -> dict[str, tuple[Status, int]]:
    """Return `count` jobs over every status, `per_score` jobs sharing each score (µs)."""
    base = redis_time_micros(conn) - 600 * MICROS
    return {
        f"job-{i:05d}": (STATUSES[i % len(STATUSES)], base + (i // per_score) * 1000)
        for i in range(count)
    }


def pairs(batches: list[Batch]) -> list[tuple[str, Status]]:
    """Return every (job id, status) the batches hold, in order."""
    return [
        (job_id.decode(), status)
        for batch in batches
        for status, members in batch
        for job_id in members
    ]


def read_all(window: Window) -> list[tuple[str, Status]]:
    """Return every (job id, status) of the window: its first read, then the rest."""
    return pairs([window.ids, *window.rest])


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("per_score", [1, 5, 40])
def test_batched_read_equals_one_read(
    conn: redis.Redis, index: StatusIndex, batch: int, per_score: int
) -> None:
    """With nothing changing, any batch size lists exactly the jobs and statuses of one read."""
    entries = spread(conn, 600, per_score)
    plant(conn, entries)
    one = index.window(SINCE, "default", batch=10_000)
    assert one.complete
    expected = pairs([one.ids])
    assert dict(expected) == {job_id: status for job_id, (status, _) in entries.items()}

    batched = index.window(SINCE, "default", batch=batch)
    assert not batched.complete
    got = read_all(batched)
    assert len(got) == len(set(got)) == len(expected)
    assert sorted(got) == sorted(expected)


def test_a_run_of_one_score_longer_than_a_batch(conn: redis.Redis, index: StatusIndex) -> None:
    """Jobs sharing one score across several batch boundaries are each listed once."""
    now = redis_time_micros(conn)
    entries = {f"run-{i:03d}": (Status.DONE, now - 5 * MICROS) for i in range(50)}
    entries |= {f"before-{i}": (Status.DONE, now - 9 * MICROS + i) for i in range(4)}
    entries |= {f"after-{i}": (Status.DONE, now - 2 * MICROS + i) for i in range(4)}
    plant(conn, entries)
    got = read_all(index.window(SINCE, "default", batch=6))
    assert Counter(got) == Counter({(job_id, Status.DONE): 1 for job_id in entries})


@pytest.mark.parametrize(("jobs", "complete"), [(4, True), (5, False)])
def test_complete_only_below_a_full_batch(
    conn: redis.Redis, index: StatusIndex, jobs: int, complete: bool
) -> None:
    """The first read is the whole answer only when every set returned fewer than a batch."""
    entries = spread(conn, jobs, 1)
    plant(conn, {job_id: (Status.FAILED, score) for job_id, (_, score) in entries.items()})
    window = index.window(SINCE, "default", batch=5)
    assert window.complete is complete
    assert len(read_all(window)) == jobs


def test_window_ids_collects_every_batch(
    conn: redis.Redis, index: StatusIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """window_ids() returns the whole window, per status, however many batches it takes."""
    monkeypatch.setattr(index_module, "WINDOW_BATCH", 2_000)
    monkeypatch.setattr(index_module, "STREAM_BATCH", 1_500)
    entries = spread(conn, 25_003, 3)
    plant(conn, entries)
    assert not index.window(SINCE, "default").complete
    read = index.window_ids(SINCE, "default")
    assert [status for status, _ in read.ids] == STATUSES
    assert sum(len(members) for _, members in read.ids) == 25_003
    for status, members in read.ids:
        assert {m.decode() for m in members} == {j for j, (s, _) in entries.items() if s is status}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(min_value=1, max_value=60),
    per_score=st.integers(min_value=1, max_value=8),
    batch=st.integers(min_value=1, max_value=9),
    moves=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),  # after how many batches
            st.integers(min_value=0, max_value=59),  # which job (mod count)
            st.sampled_from(STATUSES),  # to which status
        ),
        max_size=20,
    ),
)
def test_jobs_moving_during_a_batched_read(
    conn: redis.Redis,
    index: StatusIndex,
    count: int,
    per_score: int,
    batch: int,
    moves: list[tuple[int, int, Status]],
) -> None:
    """Jobs changing between batches: never listed twice, the unchanged ones exactly once with
    their status, a changed one at most once with a status it had, and next poll lists it."""
    conn.flushall()
    entries = spread(conn, count, per_score)
    plant(conn, entries)
    window = index.window(SINCE, "default", batch=batch)
    had = {job_id: {status} for job_id, (status, _) in entries.items()}
    moved: set[str] = set()
    got = pairs([window.ids])
    for step in itertools.count():
        for after, which, status in moves:
            if after == step:
                job_id = f"job-{which % count:05d}"
                record(index, job_id, RQ_STATUS[status])
                had[job_id].add(status)
                moved.add(job_id)
        batch_read = next(window.rest, None)
        if batch_read is None:
            break
        got += pairs([batch_read])

    listed = Counter(job_id for job_id, _ in got)
    assert all(times == 1 for times in listed.values()), listed.most_common(3)
    for job_id, status in got:
        assert status in had[job_id]
    for job_id, (status, _) in entries.items():
        if job_id not in moved:
            assert (job_id, status) in got
    # What this answer may have missed, the next poll (asked from before it) lists.
    after = dict(pairs([index.window(SINCE, "default").ids]))
    for job_id in moved:
        assert after[job_id] is index_status(conn, job_id)


def index_status(conn: redis.Redis, job_id: str) -> Status:
    """Return the status set holding `job_id`."""
    for status in STATUSES:
        if conn.zscore(keys.status_index_key(status), job_id) is not None:
            return status
    raise AssertionError(f"{job_id} is in no set")


@pytest.mark.parametrize(("first", "later"), [(6, 6), (6, 4), (4, 6), (7, 2)])
def test_each_later_read_holds_a_stream_batch(
    conn: redis.Redis, index: StatusIndex, first: int, later: int
) -> None:
    """Scores all distinct: every later read but the last holds the ids below the score of its
    `stream_batch`-th entry, `stream_batch - 1` of them; the first read at most `batch`."""
    entries = spread(conn, 5 * 23, 1)
    plant(conn, entries)
    window = index.window(SINCE, "default", batch=first, stream_batch=later)
    assert all(len(members) <= first for _, members in window.ids)
    assert not window.complete
    sizes: dict[Status, list[int]] = {}
    for batch in window.rest:
        for status, members in batch:
            sizes.setdefault(status, []).append(len(members))
    for status, counts in sizes.items():
        assert sum(counts) == 23, status
        assert counts[:-1] == [later - 1] * (len(counts) - 1), (status, counts)
        assert 0 < counts[-1] <= later, (status, counts)


def test_later_reads_default_to_the_smaller_of_batch_and_stream_batch(
    conn: redis.Redis, index: StatusIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without stream_batch, later reads take STREAM_BATCH ids, or `batch` when smaller."""
    monkeypatch.setattr(index_module, "STREAM_BATCH", 5)
    plant(conn, spread(conn, 5 * 23, 1))
    for batch, expected in ((8, 5 - 1), (3, 3 - 1)):
        window = index.window(SINCE, "default", batch=batch)
        largest = max(len(m) for read in window.rest for _, m in read)
        assert largest == expected, batch
