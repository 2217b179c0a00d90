"""The status index against a real redis-server."""

from __future__ import annotations

import pytest
import redis
from rq.job import JobStatus

from shared import index as index_module
from shared import keys
from shared.exceptions import IndexNotFoundError
from shared.index import (
    FINAL_STATUSES,
    TRIM_BATCH,
    Start,
    StatusIndex,
    WindowIds,
    parse_transitions,
)
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from tests.helpers import indexed, record


def test_record_moves_the_single_entry_and_writes_rq_status(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """A job has exactly one index entry, in the set of its latest status, and RQ's field agrees."""
    record(index, "job-1", JobStatus.QUEUED)
    record(index, "job-1", JobStatus.STARTED)
    record(index, "job-1", JobStatus.FINISHED)
    memberships = [conn.zscore(keys.status_index_key(s), "job-1") for s in Status]
    assert [m is not None for m in memberships] == [False, False, True, False, False]
    assert conn.hget(keys.rq_job_key("job-1"), "status") == b"finished"
    assert conn.exists(keys.marker_key())


def test_score_is_redis_server_time(conn: redis.Redis, index: StatusIndex) -> None:
    """The score is the Redis server clock in microseconds at the time of the write."""
    before = redis_time_micros(conn)
    record(index, "job-1", JobStatus.QUEUED)
    after = redis_time_micros(conn)
    found = indexed(conn, "job-1")
    assert found is not None
    status, score = found
    assert status is Status.QUEUED
    assert before <= score <= after


RETENTION = 60
MINUTE_US = 60 * MICROS


def test_trim_expired_removes_old_final_entries_only(conn: redis.Redis) -> None:
    """trim_expired removes final entries older than the retention; queued and running stay."""
    index = StatusIndex(conn, RETENTION)
    now = redis_time_micros(conn)
    for status in Status:
        conn.zadd(
            keys.status_index_key(status),
            {f"ancient-{status}": 1, f"old-{status}": now - 2 * MINUTE_US, f"new-{status}": now},
        )
    assert index.trim_expired() == 2 * len(FINAL_STATUSES)
    for status in Status:
        members = {m.decode() for m in conn.zrange(keys.status_index_key(status), 0, -1)}
        if status in FINAL_STATUSES:
            assert members == {f"new-{status}"}, status
        else:
            assert members == {f"ancient-{status}", f"old-{status}", f"new-{status}"}, status


def test_trim_expired_keeps_entries_inside_the_retention(conn: redis.Redis) -> None:
    """An entry a little younger than the retention stays; a little older goes."""
    index = StatusIndex(conn, RETENTION)
    now = redis_time_micros(conn)
    key = keys.status_index_key(Status.DONE)
    conn.zadd(key, {"inside": now - (RETENTION - 5) * MICROS})
    conn.zadd(key, {"outside": now - (RETENTION + 5) * MICROS})
    assert index.trim_expired() == 1
    assert conn.zscore(key, "inside") is not None
    assert conn.zscore(key, "outside") is None


def test_trim_expired_works_through_more_than_one_batch(conn: redis.Redis) -> None:
    """trim_expired keeps removing bounded batches until no expired entry is left."""
    index = StatusIndex(conn, RETENTION)
    key = keys.status_index_key(Status.DONE)
    count = 2 * TRIM_BATCH + 7
    conn.zadd(key, {f"job-{i}": 1_000 + i for i in range(count)})
    conn.zadd(key, {"fresh": redis_time_micros(conn)})
    assert index.trim_expired() == count
    assert conn.zrange(key, 0, -1) == [b"fresh"]


def test_trim_expired_is_bounded_by_max_batches(conn: redis.Redis) -> None:
    """One trim_expired call removes at most max_batches batches per set, the rest later."""
    index = StatusIndex(conn, RETENTION)
    key = keys.status_index_key(Status.FAILED)
    conn.zadd(key, {f"job-{i}": 1_000 + i for i in range(TRIM_BATCH + 3)})
    assert index.trim_expired(max_batches=1) == TRIM_BATCH
    assert conn.zcard(key) == 3
    assert index.trim_expired(max_batches=1) == 3
    assert conn.zcard(key) == 0


def test_record_never_trims(conn: redis.Redis) -> None:
    """A record leaves every other entry alone, however old: trimming is maintenance's work."""
    done = keys.status_index_key(Status.DONE)
    conn.zadd(done, {"ancient": 1})
    record(StatusIndex(conn, RETENTION), "job-new", JobStatus.FINISHED)
    assert conn.zscore(done, "ancient") == 1


def test_record_in_a_pipeline_joins_its_transaction(conn: redis.Redis) -> None:
    """A record on a MULTI pipeline writes nothing until EXEC, and nothing if discarded."""
    with conn.pipeline() as pipe:
        index_module.record(pipe, "job-1", JobStatus.QUEUED)
        assert indexed(conn, "job-1") is None
        pipe.reset()
    assert indexed(conn, "job-1") is None
    assert not conn.exists(keys.rq_job_key("job-1"))
    with conn.pipeline() as pipe:
        pipe.set("other", "1")
        index_module.record(pipe, "job-1", JobStatus.QUEUED)
        pipe.execute()
    found = indexed(conn, "job-1")
    assert found is not None and found[0] is Status.QUEUED
    assert conn.hget(keys.rq_job_key("job-1"), "status") == b"queued"


def test_window_lists_recent_changes_with_their_status(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """window_ids() returns the jobs changed within the window by status, and the queue length."""
    record(index, "job-done", JobStatus.FINISHED)
    record(index, "job-started", JobStatus.STARTED)
    conn.zadd(
        keys.status_index_key(Status.FAILED), {"job-old": redis_time_micros(conn) - MINUTE_US}
    )
    conn.rpush(keys.rq_queue_key("default"), "a", "b")
    window = index.window_ids(30, "default")
    assert statuses(window) == {"job-done": Status.DONE, "job-started": Status.RUNNING}
    assert window.queue_length == 2
    assert statuses(index.window_ids(120, "default"))["job-old"] is Status.FAILED


def test_window_without_index_marker_raises(conn: redis.Redis, index: StatusIndex) -> None:
    """window_ids() raises IndexNotFoundError when the marker is absent (new or flushed Redis)."""
    with pytest.raises(IndexNotFoundError):
        index.window_ids(600, "default")
    index.mark()
    assert statuses(index.window_ids(600, "default")) == {}


def statuses(window: WindowIds) -> dict[str, Status]:
    """Return {job_id: status} of a window read."""
    return {job_id.decode(): status for status, ids in window.ids for job_id in ids}


def transitions(conn: redis.Redis) -> dict[tuple[str, str], int]:
    """Return the counted state changes per (from, to)."""
    return parse_transitions(conn.hgetall(keys.transitions_key()))


def test_record_counts_each_status_change_once(conn: redis.Redis, index: StatusIndex) -> None:
    """Each change of API status adds exactly one to its "<from>:<to>" field, "new" first."""
    record(index, "job-1", JobStatus.QUEUED)
    assert transitions(conn) == {("new", "queued"): 1}
    record(index, "job-1", JobStatus.STARTED)
    record(index, "job-1", JobStatus.FINISHED)
    record(index, "job-2", JobStatus.QUEUED)
    record(index, "job-2", JobStatus.STARTED)
    record(index, "job-2", JobStatus.FAILED)
    assert transitions(conn) == {
        ("new", "queued"): 2,
        ("queued", "running"): 2,
        ("running", "done"): 1,
        ("running", "failed"): 1,
    }


def test_record_of_an_unchanged_status_is_not_a_transition(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """Re-recording the status a job has (created, queued, deferred) counts nothing."""
    record(index, "job-1", JobStatus.CREATED)
    record(index, "job-1", JobStatus.QUEUED)
    record(index, "job-1", JobStatus.DEFERRED)
    assert transitions(conn) == {("new", "queued"): 1}
    found = indexed(conn, "job-1")
    assert found is not None and found[0] is Status.QUEUED
    assert conn.hget(keys.rq_job_key("job-1"), "status") == b"deferred"


def test_discarded_pipeline_counts_no_transition(conn: redis.Redis, index: StatusIndex) -> None:
    """A record in a MULTI pipeline counts its transition only when the transaction commits."""
    with conn.pipeline() as pipe:
        index_module.record(pipe, "job-1", JobStatus.QUEUED)
        pipe.reset()
    assert transitions(conn) == {}
    with conn.pipeline() as pipe:
        index_module.record(pipe, "job-1", JobStatus.QUEUED)
        assert transitions(conn) == {}
        pipe.execute()
    assert transitions(conn) == {("new", "queued"): 1}


def test_parse_transitions_reads_every_field() -> None:
    """parse_transitions turns the hash's "<from>:<to>" fields and counts into a dict."""
    raw = {b"new:queued": b"3", b"running:done": b"2"}
    assert parse_transitions(raw) == {("new", "queued"): 3, ("running", "done"): 2}


def command_calls(conn: redis.Redis) -> dict[str, int]:
    """Return how many times each command ran since the last CONFIG RESETSTAT (those a script
    ran included), without CONFIG and INFO themselves."""
    stats = conn.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    return {name: n for name, n in calls.items() if not name.startswith(("config", "info"))}


def test_a_small_window_is_read_in_one_script_with_its_fence(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """A small window's fence, queue length and five reads run inside one script call: one
    round trip, one atomic snapshot, no MULTI."""
    record(index, "job-1", JobStatus.FINISHED)
    index.window_ids(60, "default")  # the script loaded, the clock raised
    conn.config_resetstat()
    window = index.window_ids(60, "default")
    assert [ids for _, ids in window.ids] == [[], [], [b"job-1"], [], []]
    calls = command_calls(conn)
    # MONITOR shows no script's commands on this Redis: the command counts say what ran.
    assert calls.pop("evalsha") == 1
    assert calls.pop("zrangebyscore") == 5
    assert calls.pop("zcount") == 5
    assert set(calls) <= {"time", "exists", "llen", "get", "set"}


def test_a_large_window_reads_the_five_sets_in_one_transaction(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """A window too large for the script is read by five ZRANGEBYSCORE in one MULTI after the
    script that opened the read (and counted it, reading no id)."""
    record(index, "job-1", JobStatus.FINISHED)
    record(index, "job-2", JobStatus.FINISHED)
    index.window(60, "default", batch=2)
    conn.config_resetstat()
    window = index.window(60, "default", batch=2)
    calls = command_calls(conn)
    assert window.ids == [(status, []) for status in Status]
    assert window.complete is False
    assert {name: calls.get(name) for name in ("evalsha", "multi", "exec", "zcount")} == {
        "evalsha": 1,
        "multi": 1,
        "exec": 1,
        "zcount": 5,
    }
    assert calls["zrangebyscore"] == 5
    streamed = [m for batch in window.rest for _, members in batch for m in members]
    assert sorted(streamed) == [b"job-1", b"job-2"]


def test_a_page_is_read_in_one_script_with_its_fence(conn: redis.Redis, index: StatusIndex) -> None:
    """A page's fence, queue length, five ranges and counts run inside one script call: one
    round trip, one atomic snapshot, no MULTI."""
    record(index, "job-1", JobStatus.FINISHED)
    record(index, "job-2", JobStatus.FAILED)
    index.page(Start(seconds=60), "default", 10, counts=True)
    conn.config_resetstat()
    page = index.page(Start(seconds=60), "default", 10, counts=True)
    assert page.ids == [(b"job-1", Status.DONE), (b"job-2", Status.FAILED)]
    assert page.counts is not None and page.counts[Status.DONE] == 1
    calls = command_calls(conn)
    assert calls.pop("evalsha") == 1
    assert calls.pop("zrangebyscore") == 5
    assert calls.pop("zcount") == 5
    assert set(calls) <= {"time", "exists", "llen", "get", "set"}


@pytest.mark.parametrize(("jobs", "multi"), [(3, 0), (4, 1)])
def test_the_script_reads_a_window_of_up_to_small_window_ids(
    conn: redis.Redis, index: StatusIndex, monkeypatch: pytest.MonkeyPatch, jobs: int, multi: int
) -> None:
    """A window of SMALL_WINDOW ids in all is read by the script alone; one more, and by a
    MULTI after it; the answer is the same either way."""
    monkeypatch.setattr(index_module, "SMALL_WINDOW", 3)
    for i in range(jobs):
        record(index, f"job-{i}", JobStatus.FINISHED if i % 2 else JobStatus.FAILED)
    conn.config_resetstat()
    window = index.window(60, "default")
    assert window.complete
    assert sorted(m for _, members in window.ids for m in members) == [
        f"job-{i}".encode() for i in range(jobs)
    ]
    assert command_calls(conn).get("multi", 0) == multi


def test_a_large_window_counts_each_set_in_its_multi(conn: redis.Redis, index: StatusIndex) -> None:
    """A window read by the MULTI counts each status set's entries in it when asked, and only
    then."""
    for i in range(3):
        record(index, f"done-{i}", JobStatus.FINISHED)
    record(index, "failed-0", JobStatus.FAILED)
    counted = index.window(60, "default", batch=2, counts=True)
    assert not counted.complete
    assert counted.counts == {
        Status.QUEUED: 0,
        Status.RUNNING: 0,
        Status.DONE: 3,
        Status.FAILED: 1,
        Status.CANCELED: 0,
    }
    assert index.window(60, "default", batch=2).counts is None
