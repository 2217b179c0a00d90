"""The tracked job class: its status writes join the caller's transaction."""

from __future__ import annotations

import redis
from rq.job import JobStatus

from shared import keys
from shared.index import StatusIndex
from shared.job import tracked_job_class
from shared.status import Status
from tests.support import indexed


def test_set_status_on_an_empty_pipeline_waits_for_its_exec(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """set_status given a fresh (empty, so falsy) pipeline writes nothing until EXEC."""
    job = tracked_job_class(index)(id="job-1", connection=conn)
    with conn.pipeline() as pipe:
        assert len(pipe) == 0
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        assert indexed(conn, "job-1") is None
        assert conn.hget(keys.rq_job_key("job-1"), "status") is None
        pipe.execute()
    found = indexed(conn, "job-1")
    assert found is not None and found[0] is Status.FAILED
    assert conn.hget(keys.rq_job_key("job-1"), "status") == b"failed"


def test_set_status_without_a_pipeline_writes_at_once(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """set_status with no pipeline records the status immediately, in RQ and the index."""
    job = tracked_job_class(index)(id="job-2", connection=conn)
    job.set_status(JobStatus.CANCELED)
    found = indexed(conn, "job-2")
    assert found is not None and found[0] is Status.CANCELED
    assert conn.hget(keys.rq_job_key("job-2"), "status") == b"canceled"
