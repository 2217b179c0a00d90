"""The task catalog: the names a client may submit, mapped to functions and payload validators.

Both sides read it: the API checks a submission's task name and payload, the workers run the
task. Every job names the one runner below, `shared.tasks.run_task`, so no import path ever
travels from a client to a worker.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rq.serializers import DefaultSerializer

from shared.settings import Settings

logger = logging.getLogger(__name__)

Payload = dict[str, Any]
TaskFunc = Callable[[Payload], Any]
Validator = Callable[[Payload], Payload]

BUILTIN_MODULE = "shared.tasks.builtin"
# The dotted name every job of the service carries as its function: RQ's own plain worker can
# import it, and the service's job class refuses any other (but the runner's old path, for jobs
# enqueued before the catalog moved: shared.job.LEGACY_RUNNER).
RUNNER = "shared.tasks.run_task"


class UnknownTaskError(Exception):
    """The task name is not in the catalog."""


class InvalidPayloadError(Exception):
    """A payload does not fit its task; the message says why."""


class ResultTooLargeError(Exception):
    """A task returned more bytes than MAX_RESULT_BYTES allows to be stored."""


@dataclass(frozen=True)
class Task:
    """A task in the catalog: its name, its function and the validator of its payload."""

    name: str
    func: TaskFunc
    validate: Validator


def _accept_any(payload: Payload) -> Payload:
    return payload


_tasks: dict[str, Task] = {}
_loaded = False
# The largest result (as RQ stores it: pickled, then base64) a job may keep: MAX_RESULT_BYTES.
_max_result_bytes = Settings().max_result_bytes


def task(name: str, validate: Validator = _accept_any) -> Callable[[TaskFunc], TaskFunc]:
    """Add the decorated function to the catalog as `name`, its payload checked by `validate`."""

    def add(func: TaskFunc) -> TaskFunc:
        existing = _tasks.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"task {name!r} is already registered by {existing.func.__module__}")
        _tasks[name] = Task(name=name, func=func, validate=validate)
        return func

    return add


def load(modules: tuple[str, ...] = (), max_result_bytes: int | None = None) -> None:
    """Import the built-in tasks and the task modules `modules`, adding their tasks; set the
    largest result a task may return (default: MAX_RESULT_BYTES's default)."""
    global _loaded, _max_result_bytes
    _max_result_bytes = max_result_bytes or Settings().max_result_bytes
    for module in (BUILTIN_MODULE, *modules):
        importlib.import_module(module)
    _loaded = True
    logger.debug("tasks in the catalog: %s", ", ".join(sorted(_tasks)))


def get(name: str) -> Task:
    """Return the task `name`, or raise UnknownTaskError."""
    if not _loaded:
        # A process that did not load the catalog itself (RQ's plain `rq worker`, a user's own
        # code): load it from the same settings the service's own processes read.
        settings = Settings.from_env()
        load(settings.task_modules, settings.max_result_bytes)
    try:
        return _tasks[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}") from None


def run_task(name: str, payload: Payload) -> Any:
    """Run the task `name` on `payload` (the only function a job may name)."""
    found = get(name)
    result = found.func(found.validate(payload))
    # Measured as RQ will store it: pickled, then base64 (4 bytes for every 3). A result too
    # large to keep fails the job, saying so, rather than filling Redis or being lost on the way.
    size = 4 * -(-len(DefaultSerializer.dumps(result)) // 3)
    if size > _max_result_bytes:
        raise ResultTooLargeError(
            f"the result of task {name!r} takes {size} bytes, more than MAX_RESULT_BYTES "
            f"({_max_result_bytes}): not stored"
        )
    return result
