"""The built-in tasks: echo, sleep and fail."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from redis.exceptions import RedisError
from rq import get_current_job

from shared.tasks import InvalidPayloadError, Payload, task

logger = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 3600
MAX_MESSAGE_LENGTH = 10_000


class TaskFailedError(Exception):
    """Raised by the `fail` task, on purpose."""


def _sleep_payload(payload: Payload) -> Payload:
    seconds = payload.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidPayloadError("sleep needs 'seconds', a number from 0 to 3600")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise InvalidPayloadError("sleep needs 'seconds', a number from 0 to 3600")
    return {"seconds": seconds}


def _fail_payload(payload: Payload) -> Payload:
    message = payload.get("message")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_LENGTH:
        raise InvalidPayloadError(f"fail needs 'message', a string of at most {MAX_MESSAGE_LENGTH}")
    return {"message": message}


@task("echo")
def echo(payload: Payload) -> Any:
    """Return the payload unchanged."""
    return payload


@task("sleep", validate=_sleep_payload)
def sleep(payload: Payload) -> Any:
    """Sleep for payload['seconds'], reporting progress in the job's meta as it goes."""
    seconds = float(payload["seconds"])
    job = get_current_job()
    deadline = time.monotonic() + seconds
    step = max(0.1, min(1.0, seconds / 100))
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step, left))
        if job is not None:
            left = max(0.0, deadline - time.monotonic())
            job.meta["progress"] = round(100 * (1 - left / seconds))
            try:
                job.save_meta()  # type: ignore[no-untyped-call]
            except RedisError as exc:
                # Progress is a courtesy: a Redis hiccup must not fail the job itself.
                logger.warning("progress of job %s not saved: %s", job.id, exc)
    return {"slept": seconds}


@task("fail", validate=_fail_payload)
def fail(payload: Payload) -> Any:
    """Raise TaskFailedError with payload['message']."""
    raise TaskFailedError(payload["message"])
