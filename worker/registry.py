"""The task registry: names a client may submit, mapped to functions and payload validators."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

Payload = dict[str, Any]
TaskFunc = Callable[[Payload], Any]
Validator = Callable[[Payload], Payload]

BUILTIN_MODULE = "worker.tasks"


class UnknownTaskError(Exception):
    """The task name is not registered."""


class InvalidPayloadError(Exception):
    """A payload does not fit its task; the message says why."""


@dataclass(frozen=True)
class Task:
    """A registered task: its name, its function and the validator of its payload."""

    name: str
    func: TaskFunc
    validate: Validator


def _accept_any(payload: Payload) -> Payload:
    return payload


_tasks: dict[str, Task] = {}


def task(name: str, validate: Validator = _accept_any) -> Callable[[TaskFunc], TaskFunc]:
    """Register the decorated function as the task `name`, its payload checked by `validate`."""

    def register(func: TaskFunc) -> TaskFunc:
        existing = _tasks.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError(f"task {name!r} is already registered by {existing.func.__module__}")
        _tasks[name] = Task(name=name, func=func, validate=validate)
        return func

    return register


def load(modules: tuple[str, ...] = ()) -> None:
    """Import the built-in tasks and the configured task modules, registering their tasks."""
    for module in (BUILTIN_MODULE, *modules):
        importlib.import_module(module)
    logger.debug("registered tasks: %s", ", ".join(sorted(_tasks)))


def get(name: str) -> Task:
    """Return the registered task `name`, or raise UnknownTaskError."""
    try:
        return _tasks[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}") from None


def names() -> list[str]:
    """Return the registered task names, sorted."""
    return sorted(_tasks)


def run_task(name: str, payload: Payload) -> Any:
    """Run the registered task `name` on `payload` (the only function a job may name)."""
    registered = get(name)
    return registered.func(registered.validate(payload))
