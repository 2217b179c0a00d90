"""The change feed's query: its fields checked (from a JSON body or a query string) and its
cursors, opaque to clients (docs/changes-feed.md). Pure: no Redis, no Flask."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from api.errors import ApiError
from api.validation import TASK_NAME_MAX, json_type, since_seconds
from shared.index import Facets, Start
from shared.redis import MICROS
from shared.status import Status

# The most jobs one page lists; and a page's size when a cursor comes without a limit.
MAX_LIMIT = 1_000
DEFAULT_LIMIT = 100
QUEUE_NAME_MAX = 200
# Up to 2^32 s (the year 2106) a double holds every µs, so `server_time` read back as `since`
# is exactly the position it came from; beyond, it would not be.
MAX_SINCE = 2**32
FIELDS = ("since_seconds", "since", "status", "queue", "task", "counts", "limit", "cursor")
# What a body may hold besides the query: the client's id, which the envelope echoes.
BODY_ONLY = ("id",)
CURSOR_VERSION = 1
# A cursor ends in this many bytes of an HMAC-SHA256 of what it holds, so that a client cannot
# edit one (say, to list statuses its query did not ask for) and have it taken.
SIGNATURE_BYTES = 16
# Longer than any cursor given out: names of 200 and 100 characters, each escaped to 6 bytes.
MAX_CURSOR = 4096
# Numbers in a query string: plain decimals, nothing Python's float() or int() would also read.
# Whole parts bounded, so that int() never works on thousands of digits (float() reads a long
# fraction quickly, and a decimal may carry one: 0.000...0325 is a number all the same).
DECIMAL_RE = re.compile(r"-?[0-9]{1,15}(\.[0-9]+)?", re.ASCII)
INTEGER_RE = re.compile(r"-?[0-9]{1,15}", re.ASCII)


@dataclass(frozen=True)
class Cursor:
    """Where a followed query goes on: after `after` (a position, µs), with the query's start
    (`start`, exclusive, for its counts) and filters."""

    after: int
    start: int
    statuses: tuple[Status, ...] | None
    facets: Facets


@dataclass(frozen=True)
class FeedQuery:
    """A change-feed query: where it starts, what it lists, whether in pages and counted."""

    start: Start
    statuses: tuple[Status, ...] | None
    facets: Facets
    counts: bool
    # None: the whole window at once (the original answer); else pages of this many jobs.
    limit: int | None
    cursor: Cursor | None

    @property
    def listed(self) -> tuple[Status, ...]:
        """Return the statuses listed (all five without a status filter)."""
        return self.statuses if self.statuses is not None else tuple(Status)


@functools.lru_cache(maxsize=4)
def cursor_key(api_key: str) -> bytes:
    """Return the key cursors are signed with, derived from the service's API key (once per
    key: every page request needs it)."""
    return hmac.new(api_key.encode(), b"toolkit-jobs cursor", hashlib.sha256).digest()


def answer_fields(
    fence: int, next_cursor: str | None, counts: dict[Status, int] | None
) -> dict[str, Any]:
    """Return the change feed's fields of an answer (docs/changes-feed.md)."""
    fields: dict[str, Any] = {"server_time": server_time(fence), "next_cursor": next_cursor}
    if counts is not None:
        fields["counts"] = {status.value: n for status, n in counts.items()}
    return fields


def from_body(body: Mapping[str, Any], retention_seconds: int, *, key: bytes) -> FeedQuery:
    """Return the query of a JSON request body; refuse fields it does not know. `key` checks
    the cursor's signature."""
    unknown = sorted(set(body) - set(FIELDS) - set(BODY_ONLY))
    if unknown:
        raise ApiError(400, f"Unknown field(s): {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    return _query(body, retention_seconds, key)


def from_query_string(
    args: Mapping[str, Sequence[str]], retention_seconds: int, *, key: bytes
) -> FeedQuery:
    """Return the query of a query string (`args`: each name's values, in order)."""
    unknown = sorted(set(args) - set(FIELDS))
    if unknown:
        raise ApiError(
            400, f"Unknown parameter(s): {', '.join(unknown)}; known: {', '.join(FIELDS)}"
        )
    fields: dict[str, Any] = {}
    for name, values in args.items():
        if name == "status":
            fields[name] = [part for value in values for part in value.split(",")]
            continue
        if len(values) != 1:
            raise ApiError(400, f"{name} may be given once")
        fields[name] = _typed(name, values[0])
    return _query(fields, retention_seconds, key)


def _typed(name: str, raw: str) -> Any:
    if name in ("queue", "task", "cursor"):
        return raw
    if name == "counts":
        flags = {"true": True, "1": True, "false": False, "0": False}
        if raw.lower() not in flags:
            raise ApiError(400, "counts must be true or false")
        return flags[raw.lower()]
    if name == "limit":
        if not INTEGER_RE.fullmatch(raw):
            raise ApiError(400, "limit must be an integer")
        return int(raw)
    if not DECIMAL_RE.fullmatch(raw):
        raise ApiError(400, f"{name} must be a number")
    return float(raw)


def _query(fields: Mapping[str, Any], retention_seconds: int, key: bytes) -> FeedQuery:
    statuses = _statuses(fields["status"]) if "status" in fields else None
    facets = Facets(
        queue=_name(fields, "queue", QUEUE_NAME_MAX), task=_name(fields, "task", TASK_NAME_MAX)
    )
    counts = fields.get("counts", False)
    if not isinstance(counts, bool):
        raise ApiError(400, f"counts must be true or false, not {json_type(counts)}")
    if counts and facets:
        raise ApiError(
            400,
            "counts cannot be combined with queue or task: counts are counted per status set, "
            "without listing jobs",
        )
    limit = _limit(fields["limit"]) if "limit" in fields else None
    if "since" in fields and "since_seconds" in fields:
        raise ApiError(400, "Send since or since_seconds, not both")
    if "cursor" not in fields:
        if "since" in fields:
            start = Start(after=_since(fields["since"]))
        else:
            start = Start(seconds=since_seconds(dict(fields), retention_seconds))
        return FeedQuery(start, statuses, facets, counts, limit, None)

    if "since" in fields or "since_seconds" in fields:
        raise ApiError(
            400, "A cursor goes on from where the last page ended: send no since or since_seconds"
        )
    cursor = decode_cursor(fields["cursor"], key=key)
    if statuses is not None and set(statuses) != set(cursor.statuses or Status):
        raise ApiError(400, "status differs from the cursor's query: leave it out or send it same")
    for name in ("queue", "task"):
        if name in fields and getattr(facets, name) != getattr(cursor.facets, name):
            raise ApiError(
                400, f"{name} differs from the cursor's query: leave it out or send it same"
            )
    if counts and cursor.facets:
        raise ApiError(400, "counts cannot be combined with queue or task")
    return FeedQuery(
        start=Start(after=cursor.after),
        statuses=cursor.statuses,
        facets=cursor.facets,
        counts=counts,
        limit=limit if limit is not None else DEFAULT_LIMIT,
        cursor=cursor,
    )


def _statuses(value: Any) -> tuple[Status, ...]:
    names = value if isinstance(value, list) else [value]
    if not names:
        raise ApiError(400, "status must name at least one status")
    known = [status.value for status in Status]
    chosen: list[Status] = []
    for name in names:
        if not isinstance(name, str):
            raise ApiError(400, f"status must be a status or a list of them, not {json_type(name)}")
        if name not in known:
            raise ApiError(400, f"Unknown status {name[:40]!r}; known: {', '.join(known)}")
        if Status(name) not in chosen:
            chosen.append(Status(name))
    # In the index's own order, so that one set of statuses is one query whatever the order.
    return tuple(status for status in Status if status in chosen)


def _name(fields: Mapping[str, Any], name: str, longest: int) -> str | None:
    if name not in fields:
        return None
    value = fields[name]
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, not {json_type(value)}")
    if not 1 <= len(value) <= longest:
        raise ApiError(400, f"{name} must be 1 to {longest} characters")
    return value


def _limit(value: Any) -> int:
    # A whole float is an integer to JSON Schema, and some clients' serializers write 10.0.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"limit must be an integer, not {json_type(value)}")
    if not 1 <= value <= MAX_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {MAX_LIMIT}")
    limit: int = value
    return limit


def _since(value: Any) -> int:
    """Return `since` (seconds since the epoch, µs precision) as a position in µs."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(
            400, f"since must be a number of seconds since the epoch, not {json_type(value)}"
        )
    if not (math.isfinite(value) and 0 <= value <= MAX_SINCE):
        raise ApiError(400, f"since must be between 0 and {MAX_SINCE} seconds since the epoch")
    seconds: float = value
    return round(seconds * MICROS)


def server_time(position: int) -> float:
    """Return a position (µs) as the seconds since the epoch a client sends back as `since`."""
    # The shortest repr of this double reads back as the same µs: below 2^32 s, doubles are
    # finer than a µs, so round(since * MICROS) recovers the position exactly.
    return position / MICROS


def encode_cursor(after: int, query: FeedQuery, start: int, *, key: bytes) -> str:
    """Return the opaque cursor that goes on after position `after` with `query`'s filters,
    signed with `key`."""
    statuses = [s.value for s in query.statuses] if query.statuses is not None else None
    fields = [CURSOR_VERSION, after, start, statuses, query.facets.queue, query.facets.task]
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw + _signature(raw, key)).rstrip(b"=").decode()


def _signature(raw: bytes, key: bytes) -> bytes:
    return hmac.new(key, raw, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def decode_cursor(value: Any, *, key: bytes) -> Cursor:
    """Return the cursor `value` holds; refuse one this service (signing with `key`) did not
    give out."""
    if not isinstance(value, str):
        raise ApiError(400, f"cursor must be a string, not {json_type(value)}")
    refused = ApiError(
        400, "cursor is not one this service gave out: send a next_cursor as it came"
    )
    if len(value) > MAX_CURSOR:
        raise refused
    try:
        signed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        raw, signature = signed[:-SIGNATURE_BYTES], signed[-SIGNATURE_BYTES:]
        if not hmac.compare_digest(signature, _signature(raw, key)):
            raise refused
        version, after, start, statuses, queue, task = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise refused from None
    positions_ok = all(
        isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**53 for n in (after, start)
    )
    if type(version) is not int or version != CURSOR_VERSION or not positions_ok or start > after:
        raise refused
    try:
        chosen = _statuses(statuses) if statuses is not None else None
        facets = Facets(
            queue=_name({"queue": queue}, "queue", QUEUE_NAME_MAX) if queue is not None else None,
            task=_name({"task": task}, "task", TASK_NAME_MAX) if task is not None else None,
        )
    except ApiError:
        raise refused from None
    return Cursor(after=after, start=start, statuses=chosen, facets=facets)
