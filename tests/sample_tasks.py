"""A user task module, loaded through the TASK_MODULES setting in tests: registers `reverse`."""

from __future__ import annotations

from typing import Any

from shared.tasks import InvalidPayloadError, Payload, task


def _text_payload(payload: Payload) -> Payload:
    text = payload.get("text")
    if not isinstance(text, str):
        raise InvalidPayloadError("reverse needs 'text', a string")
    return {"text": text}


@task("reverse", validate=_text_payload)
def reverse(payload: Payload) -> Any:
    """Return the text reversed."""
    return {"text": payload["text"][::-1]}
