"""RQ's job statuses map onto the five API statuses."""

from __future__ import annotations

import pytest
from rq.job import JobStatus

from shared.status import FROM_RQ, Status, from_rq

EXPECTED = {
    "created": "queued",
    "queued": "queued",
    "deferred": "queued",
    "scheduled": "queued",
    "started": "running",
    "finished": "done",
    "failed": "failed",
    "stopped": "canceled",
    "canceled": "canceled",
}


def test_every_rq_status_is_mapped() -> None:
    """The mapping covers every status RQ defines, and nothing else."""
    assert set(FROM_RQ) == set(JobStatus)


@pytest.mark.parametrize("rq_status", list(JobStatus), ids=lambda s: s.value)
def test_rq_status_maps_to_its_api_status(rq_status: JobStatus) -> None:
    """Each RQ status maps to the documented API status, given as enum or string."""
    assert from_rq(rq_status) is Status(EXPECTED[rq_status.value])
    assert from_rq(rq_status.value) is Status(EXPECTED[rq_status.value])


def test_every_api_status_is_reachable() -> None:
    """Each of the five API statuses is the image of at least one RQ status."""
    assert set(FROM_RQ.values()) == set(Status)
    assert [s.value for s in Status] == ["queued", "running", "done", "failed", "canceled"]


def test_unknown_status_is_refused() -> None:
    """A status RQ does not define raises ValueError instead of mapping silently."""
    with pytest.raises(ValueError):
        from_rq("exploded")
