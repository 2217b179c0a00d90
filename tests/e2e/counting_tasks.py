"""A task for the scale test (loaded with TASK_MODULES): it counts its own runs in Redis."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from shared.tasks import Payload, task

RUNS_KEY = "test:runs"


@task("count")
def count(payload: Payload) -> Any:
    """Add one to this job's run count (a hash field per job id) and return the payload."""
    job = get_current_job()
    assert job is not None, "count runs only inside an RQ job"
    job.connection.hincrby(RUNS_KEY, job.id, 1)
    return payload
