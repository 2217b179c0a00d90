"""Only tasks in the catalog run: the catalog, TASK_MODULES, and the job class's function guard."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue
from rq.job import Callback, Job, JobStatus

from shared import tasks
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import AUTH, Observed, error_of
from worker.main import TrackingMixin

SAMPLE = "tests.sample_tasks"
# Created by `forbidden` if a worker ever calls it. A file, not a list: the worker may run the
# job in a forked work-horse, whose memory the test cannot see.
CALLED: Path | None = None


def forbidden(*args: Any) -> None:
    """Leave a mark: a function no job of the service may run."""
    assert CALLED is not None
    CALLED.touch()


@pytest.fixture
def called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return the file `forbidden` creates when called (fresh per test)."""
    marker = tmp_path / "forbidden-called"
    monkeypatch.setattr(sys.modules[__name__], "CALLED", marker)
    return marker


@pytest.mark.parametrize(
    "name",
    ["os.system", "__import__", "shared.tasks.builtin.echo", "run_task", "shared.tasks.run_task"],
)
def test_get_refuses_names_that_are_not_registered_tasks(name: str) -> None:
    """The catalog finds only its task names, never import paths or builtins."""
    tasks.load()
    with pytest.raises(tasks.UnknownTaskError, match="unknown task"):
        tasks.get(name)


def test_builtin_tasks_are_registered() -> None:
    """Loading the catalog adds the built-in echo, sleep and fail tasks."""
    tasks.load()
    assert {"echo", "sleep", "fail"} <= set(tasks._tasks)


def test_unregistered_task_name_fails_the_job(
    called: Path,
    queue: Queue,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """A job naming an unregistered task (even an import path) fails without running it."""
    job = queue.enqueue(RUNNER, f"{__name__}.forbidden", {})
    run_worker()
    assert observe(job.id) == (Status.FAILED, JobStatus.FAILED)
    assert "UnknownTaskError" in error_of(conn, job.id)
    assert not called.exists()


@pytest.mark.parametrize("func_name", ["os.getcwd", f"{__name__}.forbidden"])
def test_job_naming_another_function_fails_without_calling_it(
    called: Path,
    func_name: str,
    queue: Queue,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    observe: Callable[[str], Observed],
) -> None:
    """A job in the queue naming any function but the task runner fails; the function never runs."""
    job = queue.enqueue(func_name, "x")
    run_worker()
    assert observe(job.id) == (Status.FAILED, JobStatus.FAILED)
    error = error_of(conn, job.id)
    assert "UnregisteredFunctionError" in error
    assert f"names {func_name!r}, not the task runner" in error
    assert not called.exists()


@pytest.mark.parametrize("hook", ["on_success", "on_failure"])
def test_job_callbacks_naming_other_functions_never_run(
    called: Path,
    hook: str,
    queue: Queue,
    run_worker: Callable[..., TrackingMixin],
) -> None:
    """A job's success or failure callback naming an arbitrary function is never called."""
    task, payload = ("echo", {}) if hook == "on_success" else ("fail", {"message": "x"})
    queue.enqueue(RUNNER, task, payload, **{hook: Callback(f"{__name__}.forbidden")})
    run_worker()
    assert not called.exists()


def test_duplicate_registration_by_another_function_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registering a taken name with a different function raises ValueError; the first stays."""
    tasks.load()
    monkeypatch.setattr(tasks, "_tasks", dict(tasks._tasks))
    original = tasks.get("echo").func

    def impostor(payload: tasks.Payload) -> Any:
        return "impostor"

    with pytest.raises(ValueError, match="'echo' is already registered"):
        tasks.task("echo")(impostor)
    assert tasks.get("echo").func is original


def test_reregistering_the_same_function_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering the same function under its own name again keeps one registration."""
    tasks.load()
    monkeypatch.setattr(tasks, "_tasks", dict(tasks._tasks))
    echo = tasks.get("echo").func
    tasks.task("echo")(echo)
    assert tasks.get("echo").func is echo
    assert list(tasks._tasks).count("echo") == 1


def test_task_modules_register_user_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading TASK_MODULES imports the module, whose decorated tasks become registered."""
    monkeypatch.setattr(tasks, "_tasks", {})
    already = sys.modules.pop(SAMPLE, None)
    try:
        tasks.load()
        assert "reverse" not in tasks._tasks
        tasks.load((SAMPLE,))
        assert "reverse" in tasks._tasks
    finally:
        # Leave the module as found, so later loads register into the restored tasks.
        sys.modules.pop(SAMPLE, None)
        if already is not None:
            sys.modules[SAMPLE] = already


def test_user_task_is_accepted_by_the_api_and_run_by_the_worker(
    make_app: Callable[..., Flask],
    run_worker: Callable[..., TrackingMixin],
    conn: redis.Redis,
    observe: Callable[[str], Observed],
) -> None:
    """With TASK_MODULES set, the API accepts the user task and the worker runs it to done."""
    client = make_app(task_modules=(SAMPLE,)).test_client()
    bad = client.post("/v1/toolkit/jobs", json={"task": "reverse", "payload": {}}, headers=AUTH)
    assert bad.status_code == 400
    resp = client.post(
        "/v1/toolkit/jobs", json={"task": "reverse", "payload": {"text": "abc"}}, headers=AUTH
    )
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["job_id"]
    run_worker(task_modules=(SAMPLE,))
    assert observe(job_id) == (Status.DONE, JobStatus.FINISHED)
    assert Job.fetch(job_id, connection=conn).return_value() == {"text": "cba"}


def test_loading_an_absent_task_module_fails_loudly() -> None:
    """A TASK_MODULES entry that cannot be imported raises at start, naming the module."""
    with pytest.raises(ModuleNotFoundError, match="no_such_tasks_module"):
        tasks.load(("no_such_tasks_module",))
