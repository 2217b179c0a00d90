"""The change feed's query (api/feed.py), pure: every refusal a 400 that says why, the forms it
accepts, its cursors and its server_time; no Redis, no Flask (docs/changes-feed.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import feed
from api.errors import ApiError
from shared.index import Facets, Start
from shared.redis import MICROS
from shared.status import Status

RETENTION = 3600
# The key cursors are signed with, as a service with the tests' API key derives it.
KEY = feed.cursor_key("the-api-key")
ALL = tuple(Status)
# Positions a cursor may hold: µs below 2^53 (docs/index-layout.md).
POSITIONS = st.integers(min_value=0, max_value=2**53 - 1)
# Names of RQ's usual alphabet (no JSON escapes), up to the longest each field takes.
NAME_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\')
QUEUES = st.none() | st.text(NAME_CHARS, min_size=1, max_size=feed.QUEUE_NAME_MAX)
TASKS = st.none() | st.text(NAME_CHARS, min_size=1, max_size=100)
STATUS_SETS = st.none() | st.lists(st.sampled_from(ALL), min_size=1, unique=True).map(
    lambda chosen: tuple(s for s in Status if s in chosen)
)


def from_body(**fields: Any) -> feed.FeedQuery:
    """Return the query of a JSON body holding `fields`."""
    return feed.from_body(fields, RETENTION, key=KEY)


def from_args(**args: list[str]) -> feed.FeedQuery:
    """Return the query of a query string holding `args` (each name's values, in order)."""
    return feed.from_query_string(args, RETENTION, key=KEY)


def refusal(read: Callable[[], object]) -> str:
    """Assert `read()` raises a 400 ApiError; return its message."""
    with pytest.raises(ApiError) as caught:
        read()
    assert caught.value.code == 400, caught.value.message
    return caught.value.message


def cursor_of(
    after: int = 2_000,
    start: int = 1_000,
    statuses: tuple[Status, ...] | None = None,
    queue: str | None = None,
    task: str | None = None,
) -> str:
    """Return the cursor the service gives out for a query of these filters, after `after`."""
    query = feed.FeedQuery(Start(), statuses, Facets(queue, task), False, 10, None)
    return feed.encode_cursor(after, query, start, key=KEY)


def raw_cursor(fields: Any, key: bytes = KEY) -> str:
    """Return `fields` encoded as the service encodes a cursor (JSON and its signature with
    `key`, URL-safe base64): only what the fields hold can make it a refusal."""
    raw = json.dumps(fields, separators=(",", ":")).encode()
    signature = hmac.new(key, raw, hashlib.sha256).digest()[: feed.SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(raw + signature).rstrip(b"=").decode()


BODY_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-status": ({"status": "finished"}, "Unknown status 'finished'"),
    "unknown-status-in-list": ({"status": ["done", "stopped"]}, "Unknown status 'stopped'"),
    "empty-status-list": ({"status": []}, "status must name at least one status"),
    "status-number": ({"status": 3}, "status must be a status or a list of them"),
    "status-null": ({"status": None}, "status must be a status or a list of them"),
    "status-list-of-numbers": ({"status": ["done", 1]}, "status must be a status or a list"),
    "status-nested-list": ({"status": [["done"]]}, "status must be a status or a list"),
    "status-object": ({"status": {"done": True}}, "status must be a status or a list"),
    "since-and-since_seconds": ({"since": 5, "since_seconds": 5}, "not both"),
    "counts-with-queue": ({"counts": True, "queue": "default"}, "counts cannot be combined"),
    "counts-with-task": ({"counts": True, "task": "echo"}, "counts cannot be combined"),
    "counts-string": ({"counts": "true"}, "counts must be true or false"),
    "counts-number": ({"counts": 1}, "counts must be true or false"),
    "counts-null": ({"counts": None}, "counts must be true or false"),
    "limit-0": ({"limit": 0}, "limit must be between 1 and 1000"),
    "limit-negative": ({"limit": -1}, "limit must be between 1 and 1000"),
    "limit-1001": ({"limit": 1001}, "limit must be between 1 and 1000"),
    "limit-fraction": ({"limit": 1.5}, "limit must be an integer"),
    "limit-true": ({"limit": True}, "limit must be an integer"),
    "limit-string": ({"limit": "10"}, "limit must be an integer"),
    "limit-null": ({"limit": None}, "limit must be an integer"),
    "since-negative": ({"since": -1}, "since must be between 0 and"),
    "since-negative-fraction": ({"since": -0.000001}, "since must be between 0 and"),
    "since-nan": ({"since": math.nan}, "since must be between 0 and"),
    "since-infinity": ({"since": math.inf}, "since must be between 0 and"),
    "since-beyond-max": ({"since": feed.MAX_SINCE + 1}, "since must be between 0 and"),
    "since-true": ({"since": True}, "since must be a number"),
    "since-string": ({"since": "1795960000.5"}, "since must be a number"),
    "since-null": ({"since": None}, "since must be a number"),
    "since_seconds-negative": ({"since_seconds": -1}, "since_seconds must be >= 0"),
    "since_seconds-beyond-retention": ({"since_seconds": RETENTION + 1}, "at most 3600"),
    "unknown-field": ({"sinse": 5}, "Unknown field(s): sinse; known: since_seconds"),
    "unknown-fields-named-sorted": ({"b": 1, "a": 2}, "Unknown field(s): a, b"),
    "queue-empty": ({"queue": ""}, "queue must be 1 to 200 characters"),
    "queue-too-long": ({"queue": "q" * 201}, "queue must be 1 to 200 characters"),
    "queue-number": ({"queue": 7}, "queue must be a string, not"),
    "task-empty": ({"task": ""}, "task must be 1 to 100 characters"),
    "task-too-long": ({"task": "t" * 101}, "task must be 1 to 100 characters"),
    "task-list": ({"task": ["echo"]}, "task must be a string, not"),
    "cursor-number": ({"cursor": 5}, "cursor must be a string, not"),
    "cursor-null": ({"cursor": None}, "cursor must be a string, not"),
    "cursor-list": ({"cursor": [cursor_of()]}, "cursor must be a string, not"),
    "cursor-and-since": ({"cursor": cursor_of(), "since": 5}, "send no since or since_seconds"),
    "cursor-and-since_seconds": (
        {"cursor": cursor_of(), "since_seconds": 5},
        "send no since or since_seconds",
    ),
}


@pytest.mark.parametrize(
    ("fields", "message"), BODY_REFUSALS.values(), ids=list(BODY_REFUSALS.keys())
)
def test_a_body_the_contract_refuses_is_a_400_saying_why(
    fields: dict[str, Any], message: str
) -> None:
    """Each refusal the contract lists is a 400 ApiError whose message names the problem."""
    assert message in refusal(lambda: from_body(**fields))


DIFFERENT_FILTERS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "other-status": ({"statuses": (Status.FAILED,)}, {"status": "done"}, "status differs"),
    "fewer-statuses": (
        {"statuses": (Status.DONE, Status.FAILED)},
        {"status": "done"},
        "status differs",
    ),
    "status-where-the-cursor-had-none": ({}, {"status": "done"}, "status differs"),
    "other-queue": ({"queue": "default"}, {"queue": "other"}, "queue differs"),
    "queue-where-the-cursor-had-none": ({}, {"queue": "default"}, "queue differs"),
    "other-task": ({"task": "echo"}, {"task": "sleep"}, "task differs"),
    "task-where-the-cursor-had-none": ({}, {"task": "echo"}, "task differs"),
    "counts-with-the-cursors-queue": (
        {"queue": "default"},
        {"counts": True},
        "counts cannot be combined with queue or task",
    ),
    "counts-with-the-cursors-task": (
        {"task": "echo"},
        {"counts": True},
        "counts cannot be combined with queue or task",
    ),
}


@pytest.mark.parametrize(
    ("filters", "sent", "message"), DIFFERENT_FILTERS.values(), ids=list(DIFFERENT_FILTERS.keys())
)
def test_a_cursor_with_different_filters_is_a_400(
    filters: dict[str, Any], sent: dict[str, Any], message: str
) -> None:
    """A cursor sent with a status, queue or task other than its own (or counts its facets
    forbid) is a 400."""
    cursor = cursor_of(**filters)
    assert message in refusal(lambda: from_body(cursor=cursor, **sent))


def test_a_cursor_may_repeat_its_own_filters_in_any_order() -> None:
    """A cursor sent again with the same statuses (any order, duplicates), queue and task is
    accepted and continues its own query."""
    cursor = cursor_of(statuses=(Status.DONE, Status.FAILED), queue="default", task="echo")
    query = from_body(
        cursor=cursor, status=["failed", "done", "failed"], queue="default", task="echo", limit=7
    )
    assert query.statuses == (Status.DONE, Status.FAILED)
    assert query.facets == Facets("default", "echo")
    assert query.start == Start(after=2_000)
    assert query.limit == 7
    assert query.cursor == feed.Cursor(2_000, 1_000, (Status.DONE, Status.FAILED), query.facets)


def test_a_cursor_alone_holds_its_query_and_pages_of_100() -> None:
    """A cursor without other fields continues with its own filters, in pages of 100."""
    query = from_body(cursor=cursor_of(statuses=(Status.QUEUED,), task="echo"))
    assert query.statuses == (Status.QUEUED,)
    assert query.facets == Facets(None, "echo")
    assert query.limit == feed.DEFAULT_LIMIT == 100
    assert query.start == Start(after=2_000)
    assert query.counts is False


def test_a_cursor_without_facets_may_ask_for_counts() -> None:
    """counts with a cursor of no queue or task is accepted."""
    assert from_body(cursor=cursor_of(), counts=True).counts is True


QUERY_STRING_REFUSALS: dict[str, tuple[dict[str, list[str]], str]] = {
    "unknown-parameter": ({"limt": ["5"]}, "Unknown parameter(s): limt"),
    "id-in-a-query-string": ({"id": ["abc"]}, "Unknown parameter(s): id"),
    "limit-twice": ({"limit": ["5", "6"]}, "limit may be given once"),
    "same-limit-twice": ({"limit": ["5", "5"]}, "limit may be given once"),
    "queue-twice": ({"queue": ["a", "b"]}, "queue may be given once"),
    "since_seconds-twice": ({"since_seconds": ["1", "2"]}, "since_seconds may be given once"),
    "cursor-twice": ({"cursor": [cursor_of(), cursor_of()]}, "cursor may be given once"),
    "counts-twice": ({"counts": ["true", "true"]}, "counts may be given once"),
    "counts-maybe": ({"counts": ["maybe"]}, "counts must be true or false"),
    "counts-empty": ({"counts": [""]}, "counts must be true or false"),
    "limit-fraction": ({"limit": ["1.5"]}, "limit must be an integer"),
    "limit-word": ({"limit": ["ten"]}, "limit must be an integer"),
    "limit-empty": ({"limit": [""]}, "limit must be an integer"),
    "limit-0": ({"limit": ["0"]}, "limit must be between 1 and 1000"),
    "limit-1001": ({"limit": ["1001"]}, "limit must be between 1 and 1000"),
    "since-word": ({"since": ["yesterday"]}, "since must be a number"),
    "since-nan": ({"since": ["nan"]}, "since must be a number"),
    "since-infinity": ({"since": ["inf"]}, "since must be a number"),
    "limit-underscore": ({"limit": ["1_000"]}, "limit must be an integer"),
    "limit-space": ({"limit": [" 5"]}, "limit must be an integer"),
    "limit-arabic-digits": ({"limit": ["\u0665"]}, "limit must be an integer"),
    "since-exponent": ({"since": ["1e9"]}, "since must be a number"),
    "since-negative": ({"since": ["-1"]}, "since must be between 0 and"),
    "since_seconds-nan": ({"since_seconds": ["NaN"]}, "since_seconds must be a number"),
    "since_seconds-negative": ({"since_seconds": ["-5"]}, "since_seconds must be >= 0"),
    "since-and-since_seconds": ({"since": ["1"], "since_seconds": ["1"]}, "not both"),
    "status-empty": ({"status": [""]}, "Unknown status ''"),
    "status-trailing-comma": ({"status": ["done,"]}, "Unknown status ''"),
    "status-unknown-in-list": ({"status": ["done,bogus"]}, "Unknown status 'bogus'"),
    "status-upper-case": ({"status": ["DONE"]}, "Unknown status 'DONE'"),
    "counts-with-queue": ({"counts": ["1"], "queue": ["default"]}, "counts cannot be combined"),
}


@pytest.mark.parametrize(
    ("args", "message"), QUERY_STRING_REFUSALS.values(), ids=list(QUERY_STRING_REFUSALS.keys())
)
def test_a_query_string_the_contract_refuses_is_a_400_saying_why(
    args: dict[str, list[str]], message: str
) -> None:
    """Each refusal of the query-string form is a 400 ApiError whose message names the problem."""
    assert message in refusal(lambda: from_args(**args))


def test_a_query_string_refusal_lists_what_is_known() -> None:
    """An unknown parameter's refusal names every parameter the feed knows."""
    message = refusal(lambda: from_args(state=["done"]))
    assert message.endswith("known: " + ", ".join(feed.FIELDS))


CURSOR_REFUSALS: dict[str, str] = {
    "empty": "",
    "garbage": "not a cursor!",
    "padding-only": "====",
    "not-base64": "%%%%%%%%",
    "base64-of-text": base64.urlsafe_b64encode(b"hello world").decode(),
    "base64-of-binary": base64.urlsafe_b64encode(bytes(range(256))).decode(),
    "truncated": cursor_of()[:-6],
    "truncated-to-a-third": cursor_of()[: len(cursor_of()) // 3],
    "a-character-dropped": cursor_of()[:8] + cursor_of()[9:],
    "a-character-added": cursor_of() + "x",
    "first-character-changed": "X" + cursor_of()[1:],
    "too-long": "A" * (feed.MAX_CURSOR + 1),
    "json-object": raw_cursor({"version": 1, "after": 2, "start": 1}),
    "json-string": raw_cursor("cursor"),
    "json-null": raw_cursor(None),
    "five-fields": raw_cursor([1, 2, 1, None, None]),
    "seven-fields": raw_cursor([1, 2, 1, None, None, None, None]),
    "version-0": raw_cursor([0, 2, 1, None, None, None]),
    "version-2": raw_cursor([2, 2, 1, None, None, None]),
    "version-string": raw_cursor(["1", 2, 1, None, None, None]),
    "version-null": raw_cursor([None, 2, 1, None, None, None]),
    "version-true": raw_cursor([True, 2, 1, None, None, None]),
    "version-float": raw_cursor([1.0, 2, 1, None, None, None]),
    "after-negative": raw_cursor([1, -1, 0, None, None, None]),
    "start-negative": raw_cursor([1, 5, -1, None, None, None]),
    "both-negative": raw_cursor([1, -1, -2, None, None, None]),
    "after-2-to-the-53": raw_cursor([1, 2**53, 0, None, None, None]),
    "after-float": raw_cursor([1, 2.0, 1, None, None, None]),
    "after-string": raw_cursor([1, "2", 1, None, None, None]),
    "after-true": raw_cursor([1, True, 0, None, None, None]),
    "start-null": raw_cursor([1, 2, None, None, None, None]),
    "start-after-after": raw_cursor([1, 5, 6, None, None, None]),
    "statuses-empty": raw_cursor([1, 2, 1, [], None, None]),
    "statuses-unknown": raw_cursor([1, 2, 1, ["finished"], None, None]),
    "statuses-number": raw_cursor([1, 2, 1, [3], None, None]),
    "queue-empty": raw_cursor([1, 2, 1, None, "", None]),
    "queue-too-long": raw_cursor([1, 2, 1, None, "q" * 201, None]),
    "queue-number": raw_cursor([1, 2, 1, None, 5, None]),
    "task-too-long": raw_cursor([1, 2, 1, None, None, "t" * 101]),
    "task-list": raw_cursor([1, 2, 1, None, None, ["echo"]]),
}


@pytest.mark.parametrize("cursor", CURSOR_REFUSALS.values(), ids=list(CURSOR_REFUSALS.keys()))
def test_a_cursor_the_service_did_not_give_out_is_a_400(cursor: str) -> None:
    """A garbage, truncated, tampered or malformed cursor, or one of another version, is a 400
    that asks for a next_cursor as it came."""
    message = refusal(lambda: feed.decode_cursor(cursor, key=KEY))
    assert message == "cursor is not one this service gave out: send a next_cursor as it came"
    assert refusal(lambda: from_body(cursor=cursor)) == message
    assert refusal(lambda: from_args(cursor=[cursor])) == message


def test_a_cursor_forged_from_a_real_one_is_a_400() -> None:
    """A cursor decoded, edited and encoded again by a client (here: listing every status
    instead of the one its query asked for) is not one the service gave out: a 400."""
    given_out = cursor_of(statuses=(Status.FAILED,))
    signed = base64.urlsafe_b64decode(given_out + "=" * (-len(given_out) % 4))
    fields = json.loads(signed[: -feed.SIGNATURE_BYTES])
    fields[3] = None
    forged = raw_cursor(fields, key=b"a key other than the service's")
    assert forged != given_out
    refusal(lambda: feed.decode_cursor(forged, key=KEY))


@pytest.mark.parametrize(
    ("queue", "task"),
    [("é" * feed.QUEUE_NAME_MAX, None), (None, "ü" * 100), ("\x01" * feed.QUEUE_NAME_MAX, None)],
    ids=["non-ascii-queue-of-200", "non-ascii-task-of-100", "control-characters-queue-of-200"],
)
def test_the_cursor_of_any_allowed_queue_or_task_is_accepted_back(
    queue: str | None, task: str | None
) -> None:
    """A cursor given out for a queue or task the request may name (1 to 200 or 100
    characters, any characters) is accepted back as it came."""
    cursor = cursor_of(queue=queue, task=task)
    assert feed.decode_cursor(cursor, key=KEY).facets == Facets(queue, task)


@settings(max_examples=300, deadline=None)
@given(
    after=POSITIONS,
    back=POSITIONS,
    statuses=STATUS_SETS,
    queue=QUEUES,
    task=TASKS,
    limit=st.integers(min_value=1, max_value=feed.MAX_LIMIT),
)
def test_a_cursor_round_trips(
    after: int,
    back: int,
    statuses: tuple[Status, ...] | None,
    queue: str | None,
    task: str | None,
    limit: int,
) -> None:
    """decode_cursor(encode_cursor(...)) gives back the position, start, statuses and facets;
    a body carrying it continues that query; it is URL-safe as it comes."""
    start = max(0, after - back)
    query = feed.FeedQuery(Start(), statuses, Facets(queue, task), False, limit, None)
    cursor = feed.encode_cursor(after, query, start, key=KEY)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    decoded = feed.decode_cursor(cursor, key=KEY)
    assert decoded == feed.Cursor(after, start, statuses, Facets(queue, task))
    followed = from_body(cursor=cursor, limit=limit)
    assert (followed.start, followed.statuses, followed.facets) == (
        Start(after=after),
        statuses,
        Facets(queue, task),
    )
    assert followed.limit == limit
    assert followed.cursor == decoded


def test_status_as_a_string_or_a_list_is_one_query() -> None:
    """status "done" and ["done"] are the same filter; a list of several keeps them all."""
    assert from_body(status="done").statuses == from_body(status=["done"]).statuses
    assert from_body(status="done").statuses == (Status.DONE,)
    assert from_body(status=["canceled", "queued"]).statuses == (Status.QUEUED, Status.CANCELED)


def test_statuses_collapse_and_follow_the_index_order() -> None:
    """Duplicate statuses collapse, and the order they came in does not matter."""
    shuffled = from_body(status=["failed", "done", "failed", "queued", "done"])
    ordered = from_body(status=["queued", "done", "failed"])
    assert shuffled.statuses == ordered.statuses == (Status.QUEUED, Status.DONE, Status.FAILED)
    assert shuffled == ordered


def test_status_repeated_or_comma_separated_in_a_query_string() -> None:
    """In a query string, status may repeat or hold a comma-separated list: both equal the
    body's list."""
    repeated = from_args(status=["failed", "canceled"])
    commas = from_args(status=["failed,canceled"])
    mixed = from_args(status=["canceled", "failed,canceled"])
    body = from_body(status=["failed", "canceled"])
    assert repeated == commas == mixed == body
    assert body.statuses == (Status.FAILED, Status.CANCELED)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_counts_in_a_query_string(raw: str, value: bool) -> None:
    """counts is true/false (any case) or 1/0 in a query string."""
    assert from_args(counts=[raw]).counts is value


def test_numbers_in_a_query_string_are_read_as_the_bodys() -> None:
    """limit, since and since_seconds in a query string mean what the body's numbers mean."""
    assert from_args(limit=["10"]) == from_body(limit=10)
    assert from_args(since_seconds=["2.5"]) == from_body(since_seconds=2.5)
    assert from_args(since=["1795960000.123456"]).start == Start(after=1_795_960_000_123_456)
    assert from_args(queue=["default"], task=["echo"]).facets == Facets("default", "echo")


def test_id_is_allowed_in_a_body_only() -> None:
    """A body may carry `id` (the envelope echoes it); it is no part of the query."""
    assert from_body(id="client-1", since_seconds=30) == from_body(since_seconds=30)
    assert "Unknown parameter(s): id" in refusal(lambda: from_args(id=["client-1"]))


def test_a_legacy_query_is_the_whole_window_of_every_status() -> None:
    """Nothing, or only since_seconds, is the whole window (600 s by default) of all five
    statuses, uncounted, not in pages."""
    for query, seconds in ((from_body(), 600.0), (from_body(since_seconds=0), 0.0)):
        assert query == feed.FeedQuery(Start(seconds=seconds), None, Facets(), False, None, None)
        assert query.listed == ALL
    assert from_args() == from_body()


@pytest.mark.parametrize(
    "fields",
    [
        {"limit": 1},
        {"limit": feed.MAX_LIMIT},
        {"since": 0},
        {"since": feed.MAX_SINCE},
        {"since": 1_795_960_000.5, "limit": 3},
        {"since_seconds": RETENTION},
        {"counts": False, "queue": "default"},
        {"counts": True, "status": "failed"},
        {"queue": "q" * 200, "task": "t" * 100},
    ],
    ids=lambda fields: "-".join(fields),
)
def test_the_bounds_the_contract_allows_are_accepted(fields: dict[str, Any]) -> None:
    """Values at the edges of what the contract allows are accepted as given."""
    query = from_body(**fields)
    if "limit" in fields:
        assert query.limit == fields["limit"]
    if "since" in fields:
        assert query.start == Start(after=round(fields["since"] * MICROS))
    assert query.counts is fields.get("counts", False)


def test_since_is_a_position_exclusive() -> None:
    """since (seconds, µs precision) becomes the position the read starts just after."""
    assert from_body(since=1_795_960_000.000001).start == Start(after=1_795_960_000_000_001)
    assert from_body(since=0).start == Start(after=0)
    assert from_body(since=12).start == Start(after=12_000_000)


@settings(max_examples=2_000, deadline=None)
@given(position=st.integers(min_value=0, max_value=feed.MAX_SINCE * MICROS))
def test_server_time_reads_back_as_its_position(position: int) -> None:
    """round(server_time(p) * 10^6) == p for every position up to MAX_SINCE (2^32 s, the year
    2106): a client echoing server_time as `since` loses no µs."""
    assert round(feed.server_time(position) * MICROS) == position


# Positions up to 2^32 s (2106-02-07): every Redis time of this century, and then some.
@settings(max_examples=2_000, deadline=None)
@given(position=st.integers(min_value=0, max_value=2**32 * MICROS))
def test_server_time_sent_back_as_since_starts_just_after_it(position: int) -> None:
    """server_time(p), through JSON and back as `since`, starts the next read just after p."""
    since = json.loads(json.dumps({"since": feed.server_time(position)}))["since"]
    assert from_body(since=since).start == Start(after=position)
    assert round(since * MICROS) == position


def test_a_cursor_whose_payload_was_edited_under_its_own_signature_is_a_400() -> None:
    """The signature covers what the cursor holds: the service's own signature kept under an
    edited payload (another status set) is refused."""
    given_out = cursor_of(statuses=(Status.FAILED,))
    signed = base64.urlsafe_b64decode(given_out + "=" * (-len(given_out) % 4))
    payload, signature = signed[: -feed.SIGNATURE_BYTES], signed[-feed.SIGNATURE_BYTES :]
    edited = payload.replace(b'["failed"]', b"null")
    assert edited != payload
    forged = base64.urlsafe_b64encode(edited + signature).rstrip(b"=").decode()
    refusal(lambda: feed.decode_cursor(forged, key=KEY))


def test_cursors_are_signed_per_api_key() -> None:
    """A cursor given out under one API key is refused under another."""
    cursor = cursor_of()
    assert feed.decode_cursor(cursor, key=KEY).after == 2_000
    other = feed.cursor_key("another-api-key")
    assert other != KEY
    refusal(lambda: feed.decode_cursor(cursor, key=other))


EXACT_REFUSALS: dict[str, tuple[Callable[[], object], str]] = {
    "counts-string": (
        lambda: from_body(counts="yes"),
        "counts must be true or false, not a string",
    ),
    "counts-query": (lambda: from_args(counts=["maybe"]), "counts must be true or false"),
    "counts-with-queue": (
        lambda: from_body(counts=True, queue="q"),
        "counts cannot be combined with queue or task: counts are counted per status set, "
        "without listing jobs",
    ),
    "limit-query": (lambda: from_args(limit=["ten"]), "limit must be an integer"),
    "limit-string": (lambda: from_body(limit="10"), "limit must be an integer, not a string"),
    "status-empty": (lambda: from_body(status=[]), "status must name at least one status"),
    "status-number": (
        lambda: from_body(status=[3]),
        "status must be a status or a list of them, not a number",
    ),
    "status-long": (
        lambda: from_body(status="x" * 50),
        f"Unknown status {'x' * 40!r}; known: queued, running, done, failed, canceled",
    ),
    "queue-number": (lambda: from_body(queue=5), "queue must be a string, not a number"),
    "since-string": (
        lambda: from_body(since="yesterday"),
        "since must be a number of seconds since the epoch, not a string",
    ),
    "cursor-number": (lambda: from_body(cursor=7), "cursor must be a string, not a number"),
    "unknown-fields": (
        lambda: from_body(sinse=1, filter="x"),
        "Unknown field(s): filter, sinse; known: since_seconds, since, status, queue, task, "
        "counts, limit, cursor",
    ),
    "unknown-parameters": (
        lambda: from_args(sinse=["1"], filter=["x"]),
        "Unknown parameter(s): filter, sinse; known: since_seconds, since, status, queue, task, "
        "counts, limit, cursor",
    ),
    "a-bad-parameter-after-status": (
        lambda: from_args(status=["failed"], limit=["x"]),
        "limit must be an integer",
    ),
}


@pytest.mark.parametrize("case", EXACT_REFUSALS.values(), ids=list(EXACT_REFUSALS.keys()))
def test_each_refusal_says_exactly_what_is_wrong(case: tuple[Callable[[], object], str]) -> None:
    """A refusal's message names the field, what it must be and what came instead, word for
    word; every query-string parameter is checked, those after `status` too."""
    read, message = case
    assert refusal(read) == message


def test_a_whole_float_limit_is_that_integer() -> None:
    """`limit: 10.0` (an integer to JSON Schema; some serializers write it so) is 10."""
    assert from_body(limit=10.0).limit == 10
    assert refusal(lambda: from_body(limit=1e4)) == "limit must be between 1 and 1000"


def test_every_status_sent_again_with_an_unfiltered_cursor_is_the_same_query() -> None:
    """A cursor of no status filter goes on with all five statuses named: the same query."""
    cursor = cursor_of(statuses=None)
    assert from_body(cursor=cursor, status=[s.value for s in Status]).cursor is not None
    refusal(lambda: from_body(cursor=cursor, status=["done"]))


def test_a_query_string_number_of_thousands_of_digits_is_a_400() -> None:
    """A limit or since of 5,000 digits is refused before int() or float() reads it."""
    assert refusal(lambda: from_args(limit=["9" * 5000])) == "limit must be an integer"
    assert refusal(lambda: from_args(since=["9" * 5000])) == "since must be a number"


def test_a_query_string_decimal_with_a_long_fraction_is_a_number() -> None:
    """`since_seconds=0.000…0325` (a hundred fraction digits) is a number, as the description
    says decimals are; only the whole part is bounded."""
    tiny = "0." + "0" * 100 + "325"
    assert from_args(since_seconds=[tiny]).start == Start(seconds=float(tiny))
