"""The status index against a real redis-server."""

from __future__ import annotations

import redis
from rq.job import JobStatus

from shared import keys
from shared.index import StatusIndex
from shared.status import Status


def redis_now_us(conn: redis.Redis) -> int:
    seconds, micros = conn.time()
    return int(seconds) * 1_000_000 + int(micros)


def test_record_moves_the_single_entry_and_writes_rq_status(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """A job has exactly one index entry, in the set of its latest status, and RQ's field agrees."""
    index.record("job-1", JobStatus.QUEUED)
    index.record("job-1", JobStatus.STARTED)
    index.record("job-1", JobStatus.FINISHED)
    memberships = [conn.zscore(keys.status_index_key(s), "job-1") for s in Status]
    assert [m is not None for m in memberships] == [False, False, True, False, False]
    assert conn.hget(keys.rq_job_key("job-1"), "status") == b"finished"
    assert conn.exists(keys.registry_key())


def test_score_is_redis_server_time(conn: redis.Redis, index: StatusIndex) -> None:
    """The score is the Redis server clock in microseconds at the time of the write."""
    before = redis_now_us(conn)
    index.record("job-1", JobStatus.QUEUED)
    after = redis_now_us(conn)
    found = index.score_of("job-1")
    assert found is not None
    status, score = found
    assert status is Status.QUEUED
    assert before <= score <= after
