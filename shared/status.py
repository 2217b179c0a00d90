"""The statuses the API speaks, and how RQ's statuses map onto them."""

from __future__ import annotations

from enum import StrEnum

from rq.job import JobStatus


class Status(StrEnum):
    """A job's status as the API reports it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


FROM_RQ: dict[JobStatus, Status] = {
    JobStatus.CREATED: Status.QUEUED,
    JobStatus.QUEUED: Status.QUEUED,
    JobStatus.DEFERRED: Status.QUEUED,
    JobStatus.SCHEDULED: Status.QUEUED,
    JobStatus.STARTED: Status.RUNNING,
    JobStatus.FINISHED: Status.DONE,
    JobStatus.FAILED: Status.FAILED,
    JobStatus.STOPPED: Status.CANCELED,
    JobStatus.CANCELED: Status.CANCELED,
}


def from_rq(status: JobStatus | str) -> Status:
    """Return the API status for one of RQ's job statuses."""
    return FROM_RQ[JobStatus(status)]
