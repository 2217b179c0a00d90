"""The tracked job class: status writes join the caller's transaction, callbacks are refused;
the transition log line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis
import redis.client
from rq.job import Job, JobStatus

from shared import keys
from shared.index import StatusIndex
from shared.job import TrackedJob, log_transition
from shared.queue import TrackedQueue
from shared.status import Status
from tests.helpers import indexed


def test_set_status_on_an_empty_pipeline_waits_for_its_exec(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """set_status given a fresh (empty, so falsy) pipeline writes nothing until EXEC."""
    job = TrackedJob(id="job-1", connection=conn)
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
    job = TrackedJob(id="job-2", connection=conn)
    job.set_status(JobStatus.CANCELED)
    found = indexed(conn, "job-2")
    assert found is not None and found[0] is Status.CANCELED
    assert conn.hget(keys.rq_job_key("job-2"), "status") == b"canceled"


CALLBACKS = ["success", "failure", "stopped"]


@pytest.fixture
def job(fake: fakeredis.FakeRedis) -> Job:
    """Return a tracked job on fakeredis (nothing is written)."""
    return TrackedJob(id="job-1", connection=fake)


@pytest.mark.parametrize("kind", CALLBACKS)
def test_named_callback_is_refused_with_a_warning(
    job: Job, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A job naming a callback gets None and one warning naming the job and the callback."""
    setattr(job, f"_{kind}_callback_name", "os.getcwd")
    with caplog.at_level(logging.INFO, logger="shared.job"):
        assert getattr(job, f"{kind}_callback") is None
    warnings = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shared.job"]
    assert warnings == [
        (logging.WARNING, "job job-1 names callback 'os.getcwd'; callbacks are not run")
    ]


@pytest.mark.parametrize("kind", CALLBACKS)
def test_job_without_callbacks_logs_nothing(
    job: Job, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A job naming no callback gets None and logs nothing."""
    with caplog.at_level(logging.INFO, logger="shared.job"):
        assert getattr(job, f"{kind}_callback") is None
    assert [r for r in caplog.records if r.name == "shared.job"] == []


T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def job_at(
    fake: fakeredis.FakeRedis,
    status: JobStatus,
    enqueued: float | None = None,
    started: float | None = None,
    ended: float | None = None,
    meta: dict[str, Any] | None = None,
) -> Job:
    """Return a job with `status` and its timestamps `enqueued`, `started`, `ended` s after T0."""
    job = Job(id="job-1", connection=fake)
    job._status = status
    job.meta = {"task": "echo"} if meta is None else meta
    job.enqueued_at = None if enqueued is None else T0 + timedelta(seconds=enqueued)
    job.started_at = None if started is None else T0 + timedelta(seconds=started)
    job.ended_at = None if ended is None else T0 + timedelta(seconds=ended)
    return job


def logged(
    caplog: pytest.LogCaptureFixture, job: Job, previous: Status | None
) -> logging.LogRecord:
    """Return the one record log_transition writes for `job` coming from `previous`."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shared.job"):
        log_transition(job, previous)
    records = [r for r in caplog.records if r.name == "shared.job"]
    assert len(records) == 1, records
    assert records[0].levelno == logging.INFO
    return records[0]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the structured fields of a transition record."""
    names = ("job_id", "task", "from_status", "to_status", "duration_s")
    return {name: getattr(record, name) for name in names}


def test_new_job_logs_new_as_its_from_state(
    caplog: pytest.LogCaptureFixture, fake: fakeredis.FakeRedis
) -> None:
    """A new job's line reads "new -> queued" with no duration; from_status is None."""
    record = logged(caplog, job_at(fake, JobStatus.QUEUED, enqueued=0), None)
    assert record.getMessage() == "job job-1 (echo) new -> queued"
    assert fields(record) == {
        "job_id": "job-1",
        "task": "echo",
        "from_status": None,
        "to_status": "queued",
        "duration_s": None,
    }


def test_queued_to_running_lasts_from_enqueued_to_started(
    caplog: pytest.LogCaptureFixture, fake: fakeredis.FakeRedis
) -> None:
    """queued -> running reports started_at - enqueued_at, rounded to the millisecond."""
    job = job_at(fake, JobStatus.STARTED, enqueued=0, started=1.23456, ended=50)
    record = logged(caplog, job, Status.QUEUED)
    assert record.getMessage() == "job job-1 (echo) queued -> running after 1.235s"
    assert fields(record) == {
        "job_id": "job-1",
        "task": "echo",
        "from_status": "queued",
        "to_status": "running",
        "duration_s": 1.235,
    }


@pytest.mark.parametrize(
    ("rq_status", "to_status"),
    [(JobStatus.FINISHED, "done"), (JobStatus.FAILED, "failed"), (JobStatus.STOPPED, "canceled")],
)
def test_running_to_an_end_lasts_from_started_to_ended(
    caplog: pytest.LogCaptureFixture,
    fake: fakeredis.FakeRedis,
    rq_status: JobStatus,
    to_status: str,
) -> None:
    """running -> an end state reports ended_at - started_at, rounded to the millisecond."""
    job = job_at(fake, rq_status, enqueued=0, started=10, ended=12.0004)
    record = logged(caplog, job, Status.RUNNING)
    assert record.getMessage() == f"job job-1 (echo) running -> {to_status} after 2.000s"
    assert fields(record)["from_status"] == "running"
    assert fields(record)["to_status"] == to_status
    assert fields(record)["duration_s"] == 2.0


def test_queued_to_an_end_lasts_from_enqueued_to_ended(
    caplog: pytest.LogCaptureFixture, fake: fakeredis.FakeRedis
) -> None:
    """A job canceled while queued reports its wait, ended_at - enqueued_at."""
    job = job_at(fake, JobStatus.CANCELED, enqueued=1, started=2, ended=4.5)
    record = logged(caplog, job, Status.QUEUED)
    assert record.getMessage() == "job job-1 (echo) queued -> canceled after 3.500s"
    assert fields(record)["duration_s"] == 3.5


@pytest.mark.parametrize(
    ("rq_status", "previous", "timestamps"),
    [
        (JobStatus.STARTED, Status.QUEUED, {"enqueued": None, "started": 5}),
        (JobStatus.STARTED, Status.QUEUED, {"enqueued": 0, "started": None}),
        (JobStatus.FINISHED, Status.RUNNING, {"started": None, "ended": 5}),
        (JobStatus.FINISHED, Status.RUNNING, {"started": 1, "ended": None}),
    ],
)
def test_missing_timestamp_means_no_duration(
    caplog: pytest.LogCaptureFixture,
    fake: fakeredis.FakeRedis,
    rq_status: JobStatus,
    previous: Status,
    timestamps: dict[str, float | None],
) -> None:
    """When either end of the previous state is unknown, the line has no duration at all."""
    record = logged(caplog, job_at(fake, rq_status, **timestamps), previous)
    assert " after " not in record.getMessage()
    assert record.getMessage().endswith(f"{previous.value} -> {fields(record)['to_status']}")
    assert fields(record)["duration_s"] is None


def test_job_without_task_logs_none(
    caplog: pytest.LogCaptureFixture, fake: fakeredis.FakeRedis
) -> None:
    """A job whose meta names no task (or has no meta) logs task None."""
    for meta in ({}, {"progress": 3}):
        record = logged(caplog, job_at(fake, JobStatus.QUEUED, meta=meta), None)
        assert record.getMessage() == "job job-1 (None) new -> queued"
        assert fields(record)["task"] is None
    job = job_at(fake, JobStatus.QUEUED)
    job.meta = None  # type: ignore[assignment]
    record = logged(caplog, job, None)
    assert record.getMessage() == "job job-1 (None) new -> queued"
    assert fields(record)["task"] is None


def test_delete_in_a_pipeline_waits_for_its_exec(conn: redis.Redis, queue: TrackedQueue) -> None:
    """delete(pipeline=...) writes nothing until EXEC: discarded, the job stays in RQ and index."""
    job = queue.enqueue_task("echo", {})
    with conn.pipeline() as pipe:
        TrackedJob.fetch(job.id, connection=conn).delete(pipeline=pipe)
        pipe.reset()
    assert conn.exists(job.key)
    assert conn.lrange(queue.key, 0, -1) == [job.id.encode()]
    assert indexed(conn, job.id) is not None
    with conn.pipeline() as pipe:
        TrackedJob.fetch(job.id, connection=conn).delete(pipeline=pipe)
        pipe.execute()
    assert not conn.exists(job.key)
    assert conn.lrange(queue.key, 0, -1) == []
    assert indexed(conn, job.id) is None


def test_delete_runs_rqs_deletion_inside_its_own_transaction(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, queue: TrackedQueue
) -> None:
    """Without a pipeline, RQ's deletion joins the MULTI that removes the index entry."""
    job = queue.enqueue_task("echo", {})
    given: list[object] = []
    original = Job.delete

    def spy(self: Job, pipeline: object = None, *args: object, **kwargs: object) -> None:
        given.append(pipeline)
        original(self, pipeline, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Job, "delete", spy)
    TrackedJob.fetch(job.id, connection=conn).delete()
    assert len(given) == 1 and isinstance(given[0], redis.client.Pipeline)
    assert not conn.exists(job.key) and indexed(conn, job.id) is None


def test_delete_keeps_the_queue_entry_when_asked(conn: redis.Redis, queue: TrackedQueue) -> None:
    """remove_from_queue=False leaves the id in RQ's list, as RQ's own delete does."""
    job = queue.enqueue_task("echo", {})
    TrackedJob.fetch(job.id, connection=conn).delete(remove_from_queue=False)
    assert conn.lrange(queue.key, 0, -1) == [job.id.encode()]
    assert indexed(conn, job.id) is None


def test_delete_leaves_dependents_unless_asked(conn: redis.Redis, queue: TrackedQueue) -> None:
    """A plain delete keeps the jobs that depend on it; delete_dependents=True removes them too."""
    parent = queue.enqueue_task("echo", {})
    child = queue.enqueue_task("echo", {}, depends_on=parent)
    TrackedJob.fetch(parent.id, connection=conn).delete()
    assert conn.exists(child.key) and indexed(conn, child.id) is not None
    other_parent = queue.enqueue_task("echo", {})
    other_child = queue.enqueue_task("echo", {}, depends_on=other_parent)
    TrackedJob.fetch(other_parent.id, connection=conn).delete(delete_dependents=True)
    assert not conn.exists(other_child.key) and indexed(conn, other_child.id) is None


def test_delete_in_a_pipeline_deletes_dependents_when_asked(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """delete_dependents=True inside the caller's pipeline removes the dependents at its EXEC."""
    parent = queue.enqueue_task("echo", {})
    child = queue.enqueue_task("echo", {}, depends_on=parent)
    with conn.pipeline() as pipe:
        TrackedJob.fetch(parent.id, connection=conn).delete(pipeline=pipe, delete_dependents=True)
        pipe.execute()
    assert not conn.exists(child.key) and indexed(conn, child.id) is None
