"""The plain-RQ side of the recording benchmark: a function that does nothing."""

from __future__ import annotations

from typing import Any


def noop(payload: Any) -> Any:
    """Return the payload, as the service's `echo` task does."""
    return payload
