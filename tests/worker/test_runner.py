"""The task runner: it loads the catalog itself (so RQ's plain `rq worker` runs HTTP jobs too),
and jobs that name its path from before the catalog moved still run."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from rq import Queue
from rq.job import Job, JobStatus

from shared import tasks
from shared.job import LEGACY_RUNNER
from tests.helpers import AUTH, RedisServer, run_rq
from worker.main import TrackingMixin

SAMPLE = "tests.sample_tasks"
RUNNER_TASKS = "tests.worker.runner_tasks"


def test_runner_loads_builtins_and_task_modules_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a process that never loaded the catalog, run_task loads the built-ins and TASK_MODULES."""
    # Loaded first, so that the catalog and sys.modules are restored as this process had them.
    tasks.load()
    monkeypatch.setattr(tasks, "_tasks", {})
    monkeypatch.setattr(tasks, "_loaded", False)
    # Imported afresh, so that their decorators run again into the empty catalog.
    # The re-import also rebinds the package's attribute: it is restored with the module.
    monkeypatch.setattr(tasks, "builtin", sys.modules[tasks.BUILTIN_MODULE], raising=False)
    monkeypatch.delitem(sys.modules, tasks.BUILTIN_MODULE)
    monkeypatch.delitem(sys.modules, RUNNER_TASKS, raising=False)
    monkeypatch.setenv("TASK_MODULES", RUNNER_TASKS)
    assert tasks.run_task("echo", {"n": 1}) == {"n": 1}
    assert tasks.run_task("shout", {"text": "hi"}) == "HI"


def test_runner_does_not_reload_a_loaded_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the worker has loaded the catalog, the runner does not read the environment again."""
    tasks.load()
    monkeypatch.setenv("TASK_MODULES", "no_such_tasks_module")
    assert tasks.run_task("echo", {"n": 2}) == {"n": 2}


def test_plain_rq_worker_runs_a_job_submitted_over_http(
    make_app: Callable[..., Flask], conn: redis.Redis, redis_server: RedisServer
) -> None:
    """RQ's own `rq worker`, with RQ's plain job class, runs built-in and TASK_MODULES jobs."""
    client = make_app(task_modules=(SAMPLE,)).test_client()
    ids = []
    for body in (
        {"task": "echo", "payload": {"n": 3}},
        {"task": "reverse", "payload": {"text": "abc"}},
    ):
        resp = client.post("/v1/toolkit/jobs", json=body, headers=AUTH)
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["job_id"])
    output = run_rq(
        redis_server,
        ["worker", "--burst", "--url", redis_server.url, "default"],
        TASK_MODULES=SAMPLE,
    )
    echo, reverse = (Job.fetch(job_id, connection=conn) for job_id in ids)
    assert echo.get_status() == JobStatus.FINISHED, output
    assert echo.return_value() == {"n": 3}
    assert reverse.get_status() == JobStatus.FINISHED, output
    assert reverse.return_value() == {"text": "cba"}


def test_job_naming_the_runners_old_path_still_runs(
    queue: Queue, conn: redis.Redis, run_worker: Callable[..., TrackingMixin]
) -> None:
    """A job enqueued by an older version, naming worker.registry.run_task, runs to done."""
    job = queue.enqueue(LEGACY_RUNNER, "echo", {"n": 4})
    run_worker()
    fetched = Job.fetch(job.id, connection=conn)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == {"n": 4}
