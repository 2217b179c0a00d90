"""A worker's periodic maintenance trims the status index and RQ's canceled registries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.registry import CanceledJobRegistry

from shared import keys
from shared.index import FINAL_STATUSES
from shared.job import TrackedJob
from shared.queue import TrackedQueue
from shared.redis import MICROS, redis_time_micros
from shared.settings import Settings
from shared.status import Status
from tests.helpers import JOB_CANCEL, assert_envelope, post, submit
from worker import main
from worker.main import TrackingMixin


def test_worker_maintenance_trims_expired_index_entries(
    conn: redis.Redis, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A worker's maintenance removes final entries older than the retention; others stay."""
    now = redis_time_micros(conn)
    old = now - 2 * 60 * MICROS
    for status in Status:
        conn.zadd(keys.status_index_key(status), {f"old-{status}": old, f"new-{status}": now})
    run_worker(retention_seconds=60, webhook_secret=None)
    for status in Status:
        key = keys.status_index_key(status)
        if status in FINAL_STATUSES:
            assert conn.zscore(key, f"old-{status}") is None, status
        else:
            assert conn.zscore(key, f"old-{status}") is not None, status
        assert conn.zscore(key, f"new-{status}") is not None, status


class DeadChild:
    """Stands in for a repair child process that has ended."""

    exitcode = 1

    def is_alive(self) -> bool:
        """Say the process has ended."""
        return False


def test_maintenance_starts_a_dead_repair_child_again(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_worker: Callable[[], TrackingMixin],
) -> None:
    """A repair child found dead at maintenance is logged as an error and started again."""
    worker = make_worker()
    started: list[Settings] = []
    monkeypatch.setattr(main, "start_repairer", lambda settings: started.append(settings) or "new")
    worker.repairer = DeadChild()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="worker.main"):
        worker.run_maintenance_tasks()
    assert started == [worker.settings]
    assert worker.repairer == "new"
    assert [r.getMessage() for r in caplog.records if r.name == "worker.main"] == [
        "the repair child ended (exit code 1); starting it again"
    ]


def test_a_worker_given_queue_objects_takes_their_connection(
    conn: redis.Redis, settings: Settings
) -> None:
    """Built from RQ's own queue objects and no connection, a worker uses theirs, tracked."""
    worker = main.TrackedSimpleWorker([Queue("default", connection=conn)], settings=settings)
    assert worker.connection is conn
    assert all(isinstance(queue, TrackedQueue) for queue in worker.queues)
    assert worker.job_class is TrackedJob


def test_maintenance_trims_canceled_entries_past_the_retention(
    conn: redis.Redis, settings: Settings
) -> None:
    """A worker's maintenance drops the entries of RQ's canceled registry of its queue scored
    (canceled) longer ago than the retention, and keeps the newer ones."""
    worker = main.build_worker(replace(settings, retention_seconds=60, webhook_secret=None), conn)
    registry = CanceledJobRegistry("default", connection=conn)
    now = time.time()
    conn.zadd(
        registry.key,
        {"long-ago": now - 3600, "just-past": now - 75, "recent": now - 45, "new": now},
    )
    worker.run_maintenance_tasks()
    assert sorted(registry.get_job_ids()) == ["new", "recent"]


def test_maintenance_trims_a_job_canceled_through_the_api(
    client: FlaskClient, conn: redis.Redis, settings: Settings
) -> None:
    """A job canceled through the API leaves RQ's canceled registry at the first maintenance
    after the retention, not before."""
    job_id = submit(client)
    assert_envelope(post(client, JOB_CANCEL, {"job_id": job_id}), 200)
    registry = CanceledJobRegistry("default", connection=conn)
    retention = replace(settings, retention_seconds=60, webhook_secret=None)
    main.build_worker(retention, conn).run_maintenance_tasks()
    assert registry.get_job_ids() == [job_id]
    # As if the retention had passed since the cancel.
    score = conn.zscore(registry.key, job_id)
    assert score is not None
    conn.zadd(registry.key, {job_id: score - 61})
    main.build_worker(retention, conn).run_maintenance_tasks()
    assert registry.get_job_ids() == []
