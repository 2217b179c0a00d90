"""The status index's exact bounds, on fakeredis with a frozen clock: window, trim, batches."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from fakeredis.commands_mixins import server_mixin
from rq.job import JobStatus

from shared import keys
from shared.exceptions import IndexNotFoundError
from shared.index import FINAL_STATUSES, TRIM_BATCH, Start, StatusIndex, fence_of, window_start
from shared.redis import MICROS, time_micros
from shared.status import Status
from tests.helpers import record

# 2026-01-01T00:00:00.123456Z, in µs: the frozen Redis clock of every test here.
NOW_US = 1_767_225_600_123_456
RETENTION = 3600
CUTOFF_US = NOW_US - RETENTION * MICROS
SINCE = 60
LOW_US = NOW_US - SINCE * MICROS
DONE = keys.status_index_key(Status.DONE)


class FrozenTime:
    """Stands in for the `time` module fakeredis reads TIME from; always answers NOW_US."""

    @staticmethod
    def time() -> float:
        """Return NOW_US as seconds since the epoch."""
        return NOW_US / MICROS


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    """Return a fakeredis client whose TIME (in Lua scripts too) is frozen at NOW_US."""
    monkeypatch.setattr(server_mixin, "time", FrozenTime)
    client = fakeredis.FakeRedis()
    assert time_micros(client.time()) == NOW_US
    yield client
    client.close()


@pytest.fixture
def fake_index(fake: fakeredis.FakeRedis) -> StatusIndex:
    """Return a marked status index on the frozen fakeredis, retention RETENTION seconds."""
    index = StatusIndex(fake, RETENTION)
    index.mark()
    return index


def window(index: StatusIndex, since: float) -> set[str]:
    """Return the ids of every status in the window of the last `since` seconds."""
    return {job_id.decode() for _, ids in index.window_ids(since, "default").ids for job_id in ids}


def members(client: fakeredis.FakeRedis, key: str) -> set[str]:
    """Return the members of the sorted set `key`."""
    return {m.decode() for m in client.zrange(key, 0, -1)}


def test_window_start_is_now_minus_the_window_in_microseconds() -> None:
    """window_start subtracts the window, fractions of a second included, from now in µs."""
    assert window_start(10_000_000, 1.5) == 8_500_000
    assert window_start(10_000_000, 0) == 10_000_000
    assert window_start(NOW_US, SINCE) == LOW_US


def test_window_lower_bound_is_inclusive_to_the_microsecond(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """An entry scored exactly now - since_seconds is in the window; one µs earlier is not."""
    fake.zadd(DONE, {"at-bound": LOW_US, "before-bound": LOW_US - 1, "now": NOW_US})
    fake.set(keys.clock_key(), NOW_US)  # as recording "now" left it
    fake.zadd(keys.status_index_key(Status.QUEUED), {"just-inside": LOW_US + 1})
    assert window(fake_index, SINCE) == {"at-bound", "now", "just-inside"}


def test_window_bound_follows_a_fractional_window(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """A window of 0.25 s starts exactly 250 000 µs before Redis time, inclusive."""
    fake.zadd(DONE, {"at-bound": NOW_US - 250_000, "before-bound": NOW_US - 250_001})
    assert window(fake_index, 0.25) == {"at-bound"}


def test_window_without_the_marker_says_the_directory_is_missing(
    fake: fakeredis.FakeRedis,
) -> None:
    """Without the index marker, window_ids raises "Jobs directory not found", whatever is set."""
    fake.zadd(DONE, {"orphan": NOW_US})
    with pytest.raises(IndexNotFoundError, match=r"^Jobs directory not found$"):
        StatusIndex(fake, RETENTION).window_ids(SINCE, "default")


def test_window_includes_entries_placed_after_now(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """An entry placed after Redis time (the clock stepped back since) is read: up to the index
    clock; one above the clock was never placed by a record and is not."""
    fake.zadd(DONE, {"later": NOW_US + 5_000_000, "stray": NOW_US + 5_000_001})
    fake.set(keys.clock_key(), NOW_US + 5_000_000)
    assert window(fake_index, 0) == {"later"}


def test_window_stops_one_microsecond_before_now_on_a_clock_behind() -> None:
    """The fence is now - 1 µs while the clock lags (a change in this µs is still to come), else
    the clock: every change recorded after the read lies above it."""
    assert fence_of(NOW_US, None) == NOW_US - 1
    assert fence_of(NOW_US, b"17") == NOW_US - 1
    assert fence_of(NOW_US, str(NOW_US - 1).encode()) == NOW_US - 1
    assert fence_of(NOW_US, str(NOW_US).encode()) == NOW_US
    assert fence_of(NOW_US, str(NOW_US + 9).encode()) == NOW_US + 9


def test_changes_in_one_microsecond_get_positions_one_apart(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """Three records at one frozen Redis time are placed at now, now + 1 and now + 2, and the
    index clock keeps the latest."""
    for job_id in ("a", "b", "c"):
        record(fake_index, job_id, JobStatus.QUEUED)
    queued = keys.status_index_key(Status.QUEUED)
    assert fake.zrange(queued, 0, -1, withscores=True) == [
        (b"a", NOW_US),
        (b"b", NOW_US + 1),
        (b"c", NOW_US + 2),
    ]
    assert int(fake.get(keys.clock_key()) or 0) == NOW_US + 2


def test_a_clock_step_back_places_changes_after_the_latest(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """With the index clock ahead of Redis time, a record is placed 1 µs after the clock."""
    fake.set(keys.clock_key(), NOW_US + 1_000_000)
    record(fake_index, "job-1", JobStatus.FINISHED)
    assert fake.zscore(DONE, "job-1") == NOW_US + 1_000_001
    assert int(fake.get(keys.clock_key()) or 0) == NOW_US + 1_000_001


def test_window_pairs_each_status_with_its_own_set(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """window_ids returns the five statuses in order, each with the ids of its own set only."""
    for status in Status:
        fake.zadd(keys.status_index_key(status), {f"job-{status.value}": NOW_US})
    fake.set(keys.clock_key(), NOW_US)
    fake.rpush(keys.rq_queue_key("other"), "a", "b", "c")
    read = fake_index.window_ids(SINCE, "other")
    assert read.ids == [(status, [f"job-{status.value}".encode()]) for status in Status]
    assert read.queue_length == 3


def test_record_scores_the_entry_with_redis_time(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """The record script scores the entry with Redis TIME in µs (the frozen clock here)."""
    record(fake_index, "job-1", JobStatus.STARTED)
    assert fake.zscore(keys.status_index_key(Status.RUNNING), "job-1") == NOW_US


def test_trim_expired_keeps_the_entry_exactly_at_the_cutoff(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """trim_expired keeps an entry scored exactly now - retention and removes one µs older."""
    fake.zadd(DONE, {"at-cutoff": CUTOFF_US, "past-cutoff": CUTOFF_US - 1})
    assert fake_index.trim_expired() == 1
    assert members(fake, DONE) == {"at-cutoff"}


def test_trim_expired_loops_while_batches_come_back_full(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """A batch of exactly TRIM_BATCH is full, so trim_expired goes on to the next one."""
    fake.zadd(DONE, {f"old-{i}": CUTOFF_US - 10_000 + i for i in range(2 * TRIM_BATCH)})
    fake.zadd(DONE, {"fresh": NOW_US})
    assert fake_index.trim_expired() == 2 * TRIM_BATCH
    assert members(fake, DONE) == {"fresh"}


def test_trim_expired_stops_at_max_batches_per_set(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """trim_expired runs at most max_batches batches on each set, then moves on."""
    failed = keys.status_index_key(Status.FAILED)
    fake.zadd(DONE, {f"done-{i}": CUTOFF_US - 10_000 + i for i in range(2 * TRIM_BATCH + 1)})
    fake.zadd(failed, {f"failed-{i}": CUTOFF_US - 10_000 + i for i in range(3)})
    assert fake_index.trim_expired(max_batches=2) == 2 * TRIM_BATCH + 3
    assert fake.zcard(DONE) == 1
    assert fake.zcard(failed) == 0


class CountingTrim:
    """Stands in for the trim script: every call reports a full batch removed."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[int]]] = []

    def __call__(self, keys: list[str], args: list[int]) -> int:
        """Record the call; return TRIM_BATCH."""
        self.calls.append((keys, args))
        return TRIM_BATCH


def test_trim_expired_runs_a_hundred_batches_per_set_by_default(
    fake_index: StatusIndex,
) -> None:
    """By default trim_expired stops after 100 full batches per final set, with the retention."""
    trim = CountingTrim()
    fake_index._trim = trim  # type: ignore[assignment]
    assert fake_index.trim_expired() == 100 * len(FINAL_STATUSES) * TRIM_BATCH
    assert len(trim.calls) == 100 * len(FINAL_STATUSES)
    final_keys = {(keys.status_index_key(status),) for status in FINAL_STATUSES}
    assert {tuple(k) for k, _ in trim.calls} == final_keys
    assert all(args == [RETENTION, TRIM_BATCH] for _, args in trim.calls)


def test_a_read_raises_the_clock_to_its_fence(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read records its fence as the index clock: a change recorded after Redis's clock
    stepped back still lands above the fence, so `since` = server_time misses nothing."""
    fake.set(keys.clock_key(), NOW_US - 10 * MICROS)
    assert fake_index.window(SINCE, "default").fence == NOW_US - 1
    assert int(fake.get(keys.clock_key()) or 0) == NOW_US - 1

    class SteppedBack:
        """Redis's clock, five seconds behind the read's."""

        @staticmethod
        def time() -> float:
            """Return NOW_US less five seconds."""
            return (NOW_US - 5 * MICROS) / MICROS

    monkeypatch.setattr(server_mixin, "time", SteppedBack)
    record(fake_index, "late", JobStatus.FINISHED)
    assert fake.zscore(DONE, "late") == NOW_US
    assert fake_index.window(0, "default", after=NOW_US - 1).ids[2] == (Status.DONE, [b"late"])


def test_a_read_keeps_a_clock_ahead_of_redis_time(
    fake: fakeredis.FakeRedis, fake_index: StatusIndex
) -> None:
    """A clock ahead of Redis time is the fence as it is, and a read leaves it alone."""
    fake.set(keys.clock_key(), NOW_US + 7)
    assert fake_index.page(Start(seconds=SINCE), "default", 5).fence == NOW_US + 7
    assert int(fake.get(keys.clock_key()) or 0) == NOW_US + 7
