"""A task module only the runner's own loading test names in TASK_MODULES: registers `shout`."""

from __future__ import annotations

from typing import Any

from shared.tasks import Payload, task


@task("shout")
def shout(payload: Payload) -> Any:
    """Return the text in capitals."""
    return str(payload["text"]).upper()
