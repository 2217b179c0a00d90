"""The status index against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis
from rq.job import JobStatus

from shared import index as index_module
from shared import keys
from shared.exceptions import IndexNotFoundError
from shared.index import FINAL_STATUSES, TRIM_BATCH, StatusIndex, WindowIds, parse_transitions
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


def transaction_of_the_reads(monitor: redis.client.Monitor, timeout: float = 10.0) -> list[str]:
    """Return the commands MONITOR reports from the MULTI before the first range read to its EXEC.

    Without a MULTI around the reads, return them from the first one on, up to the next EXEC or
    the first command after them.
    """
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        assert time.monotonic() < deadline, f"no end of the reads within {timeout}s: {seen}"
        command = monitor.next_command()["command"]
        names = [c.split()[0] for c in seen]
        if "ZRANGEBYSCORE" in names and command.split()[0] != "ZRANGEBYSCORE":
            seen.append(command)
            break
        seen.append(command)
    names = [c.split()[0] for c in seen]
    first_read = names.index("ZRANGEBYSCORE")
    start = first_read - 1 if first_read and names[first_read - 1] == "MULTI" else first_read
    return seen[start:]


def test_window_reads_the_five_sets_in_one_transaction(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """The five ZRANGEBYSCORE of a window run between one MULTI and its EXEC, nothing else."""
    record(index, "job-1", JobStatus.FINISHED)
    with conn.monitor() as monitor:
        window = index.window_ids(60, "default")
        conn.ping()  # a command after the window read, so the reads' end is always seen
        reads = transaction_of_the_reads(monitor)
    assert [ids for _, ids in window.ids] == [[], [], [b"job-1"], [], []]
    assert [command.split()[0] for command in reads] == ["MULTI", *["ZRANGEBYSCORE"] * 5, "EXEC"]
    assert [command.split()[1] for command in reads[1:-1]] == keys.status_index_keys()
