"""Pure tests of the streamed status answer: its parts make the same JSON as one piece."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from api.encoding import encode, statuses_json, streamed_envelope, streamed_statuses
from shared.index import Batch
from shared.status import Status

BATCHES: list[Batch] = [
    [(Status.QUEUED, [b"q-1"]), (Status.DONE, [])],
    [(Status.DONE, [])],
    [(Status.DONE, [b"d_1", b"d-2"]), (Status.FAILED, [b"f"])],
    [(Status.CANCELED, [b'a"b', b"j\xc3\xb6b", b"a\\b"])],
]


def envelope(response: Any) -> bytes:
    """Return an envelope-like object holding `response`, as the API encodes it."""
    return encode({"code": 200, "id": {"response": None}, "response": response, "message": "ok"})


def test_streamed_parts_join_to_the_object_of_one_read() -> None:
    """The parts, plain or escaped ids alike, join to the object one read would give."""
    by_status: dict[Status, list[bytes]] = {status: [] for status in Status}
    for batch in BATCHES:
        for status, members in batch:
            by_status[status] += members
    whole: Batch = list(by_status.items())
    joined = b"".join(streamed_statuses(BATCHES))
    assert json.loads(joined) == json.loads(encode(statuses_json(whole)))
    assert json.loads(b"".join(streamed_statuses([]))) == {}


def test_streamed_envelope_is_the_envelope_of_one_piece() -> None:
    """The streamed envelope has the same fields, in order, as the one built in one piece."""
    body = b"".join(streamed_envelope(envelope, streamed_statuses(BATCHES)))
    parsed = json.loads(body)
    assert list(parsed) == ["code", "id", "response", "message"]
    assert parsed["id"] == {"response": None}
    assert parsed["response"]['a"b'] == "canceled"


def test_a_failing_part_cuts_the_envelope_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An error while streaming ends the body unclosed (not JSON), raised and logged."""

    def parts() -> Iterator[bytes]:
        yield b'{"a":"done"'
        raise OSError("gone")

    sent = bytearray()
    with pytest.raises(OSError, match="gone"):
        for part in streamed_envelope(envelope, parts()):
            sent += part
    assert sent.endswith(b'"response":{"a":"done"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(sent)
    assert "the streamed answer broke off" in caplog.text
