"""The built-in tasks, run as functions."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError

from shared.tasks import builtin as tasks


class _JobWithoutRedis:
    """A job whose progress writes fail as they would while Redis is down."""

    id = "job-1"

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.saves = 0

    def save_meta(self) -> None:
        self.saves += 1
        raise ConnectionError("Redis is down")


def test_sleep_finishes_when_progress_cannot_be_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis outage while `sleep` reports progress costs the progress, not the job."""
    job = _JobWithoutRedis()
    monkeypatch.setattr(tasks, "get_current_job", lambda: job)
    assert tasks.sleep({"seconds": 0.3}) == {"slept": 0.3}
    assert job.saves >= 2
    assert job.meta["progress"] == 100
