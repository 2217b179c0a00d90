"""Pure tests of the response encoding: the fast status object and the orjson fallback."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.encoding import encode, statuses_json
from shared.status import Status


def _decoded(ids: list[tuple[Status, list[bytes]]]) -> object:
    return json.loads(encode({"response": statuses_json(ids)}))["response"]


def test_joined_object_equals_the_plain_mapping() -> None:
    """The object joined from Redis bytes decodes to exactly {job_id: status}."""
    ids = [
        (Status.QUEUED, [b"q-1"]),
        (Status.RUNNING, []),
        (Status.DONE, [b"d_1", b"d-2", b"D3"]),
        (Status.FAILED, [b"f"]),
        (Status.CANCELED, []),
    ]
    assert isinstance(statuses_json(ids), orjson.Fragment)
    assert _decoded(ids) == {
        "q-1": "queued",
        "d_1": "done",
        "d-2": "done",
        "D3": "done",
        "f": "failed",
    }


def test_an_empty_window_is_an_empty_object() -> None:
    """No ids at all encode as {}."""
    assert _decoded([(status, []) for status in Status]) == {}


@pytest.mark.parametrize(
    "odd",
    [b'a"b', b"a\\b", b"j\xc3\xb6b", b"a b", b"a\nb", b'","x', b'a":"done","b', b'"', b"\x00"],
)
def test_ids_that_need_escaping_take_the_ordinary_path(odd: bytes) -> None:
    """An id JSON cannot carry verbatim is escaped properly, never spliced in raw."""
    ids = [(Status.DONE, [b"plain", odd])]
    assert not isinstance(statuses_json(ids), orjson.Fragment)
    assert _decoded(ids) == {"plain": "done", odd.decode(): "done"}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Status)),
            st.lists(st.text(alphabet='ab-_:,"\\ {}\n\u00e9', min_size=1, max_size=6)),
        ),
        max_size=5,
    )
)
def test_any_ids_encode_to_exactly_their_mapping(
    groups: list[tuple[Status, list[str]]],
) -> None:
    """Whatever the ids hold, the answer decodes to {job_id: status}, joined or escaped."""
    ids = [(status, [job_id.encode() for job_id in members]) for status, members in groups]
    expected = {job_id: status.value for status, members in groups for job_id in members}
    assert _decoded(ids) == expected


def test_integers_beyond_64_bits_fall_back_to_the_stdlib() -> None:
    """A result orjson cannot encode (a 100-digit integer) is still encoded, exactly."""
    assert json.loads(encode({"result": 10**100})) == {"result": 10**100}


def test_a_window_beside_an_id_orjson_cannot_encode_keeps_its_statuses() -> None:
    """An `id` beyond 64 bits sends the envelope to the standard library's encoder: the window's
    statuses, joined as JSON already, are spliced in as they are, not written as a string."""
    body = {"id": 2**70, "response": statuses_json([(Status.DONE, [b"a1"])])}
    assert encode(body) == b'{"id":1180591620717411303424,"response":{"a1":"done"}}'
