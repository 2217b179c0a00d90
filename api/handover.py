"""What the fast poll (`api.fast_poll`) did before it handed a request to Flask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request

from shared.index import Window

HANDOVER = "toolkit_jobs.handover"


@dataclass(frozen=True)
class Handover:
    """A request's start, its id, its body, and the window read or the error met, if any."""

    started: float
    request_id: str
    # The JSON body, or why it could not be read or parsed (raised where Flask asks for it).
    body: dict[str, Any] | Exception
    # Why the read, or the answer after it, failed: raised where Flask would read the index.
    error: Exception | None = None
    # A window read already, too large to answer at once: Flask streams it.
    window: Window | None = None


def handover() -> Handover | None:
    """Return what the fast poll did with the current request, or None when it did nothing."""
    handed: Handover | None = request.environ.get(HANDOVER)
    return handed
