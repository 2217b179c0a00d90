"""A task module only the RQ-tools tests name in TASK_MODULES: registers `flaky`."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from shared.tasks import Payload, task

RUNS_KEY = "test:flaky-runs"


class FlakyError(Exception):
    """Raised by `flaky` on a job's first run, on purpose."""


@task("flaky")
def flaky(payload: Payload) -> Any:
    """Fail on a job's first run and return the payload on any later one (runs counted in Redis)."""
    job = get_current_job()
    assert job is not None, "flaky runs only inside an RQ job"
    runs = job.connection.hincrby(RUNS_KEY, job.id, 1)
    if runs == 1:
        raise FlakyError(f"first run of job {job.id}")
    return payload
