"""The status index: one sorted set per status, each job in exactly one, scored by Redis time.

Layout (see docs/index-layout.md): `tkj:index:<status>` holds job ids scored by the Redis
server time of their latest state change, in integer microseconds. The index marker hash
(`keys.marker_key()`) says an index lives here; its absence answers "Jobs directory not found".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import OutOfMemoryError
from rq.job import JobStatus
from rq.serializers import DefaultSerializer

from shared import keys
from shared.exceptions import IndexNotFoundError
from shared.redis import MICROS, time_micros
from shared.status import Status, from_rq

logger = logging.getLogger(__name__)

STATUSES = list(Status)
# The statuses whose entries leave the index once older than the retention. A queued or running
# entry stays as long as RQ holds its job (docs/index-layout.md): the repair pass removes it
# when RQ no longer has the job, never the clock.
FINAL_STATUSES = (Status.DONE, Status.FAILED, Status.CANCELED)
# What the repair pass (worker/repair.py) counts in the repairs hash, one field each.
REPAIR_KINDS = ("removed", "moved", "added")
# How many expired entries one trim step removes: small enough never to block Redis.
TRIM_BATCH = 500
# How many ids the first read of each status set returns at most when reading a window, then
# each later read. Measured on 10^6 jobs (docs/benchmarks.md, "Full window"): a read of 10,000
# takes Redis about 0.4 ms (at most ~1 ms alone; the first MULTI's five, under 5 ms), so a
# window of 10^4 jobs stays one consistent read; a window larger than that streams in reads of
# 5,000, whose longest stayed under 5 ms even beside 8 other full windows on 2 cores.
WINDOW_BATCH = 10_000
STREAM_BATCH = 5_000
# How many entries a page of the change feed filtered by queue or task looks at, at most (when
# its limit is lower): each one's job is read to be checked.
PAGE_SCAN = 1_000
# How many ids a window may hold in all to be read whole by the script that opens the read, in
# one round trip; a larger one is read by a MULTI after it (docs/benchmarks.md, "HTTP floor").
SMALL_WINDOW = 1_000

# Remove up to ARGV[2] entries older than ARGV[1] seconds (by this Redis server's clock) from
# the sorted set KEYS[1]; return how many went. Bounded work per call keeps Redis responsive on
# any index size.
TRIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cutoff = string.format('%.0f', now - tonumber(ARGV[1]) * 1000000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[2])
if #expired > 0 then redis.call('ZREM', KEYS[1], unpack(expired)) end
return #expired
"""

# The position of a change recorded now: this Redis server's clock in µs (KEYS[1] of the
# caller's, the index clock, holds the latest position given), or 1 µs after the latest
# position when the clock has not moved past it (two changes in one µs, a clock step back).
# Positions are unique and only grow: a change recorded after a read always lies after every
# entry that read could see (docs/changes-feed.md). Shared by the record and repair scripts.
POSITION_LUA = """
local function next_position(clock)
  local t = redis.call('TIME')
  local position = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', clock) or '0')
  if position <= last then position = last + 1 end
  redis.call('SET', clock, string.format('%.0f', position))
  return position
end
"""

# Record one state change. Guarantees, atomically: RQ's own `status` field in the job hash,
# the job's single entry in the index (moved out of every other status set), and the index
# marker all change together, scored by this Redis server's clock (made unique: POSITION_LUA),
# never the caller's.
# When the job's API status really changes (it was not already in the target set), it counts
# the change in the transitions hash, field "<from>:<to>" ("new" when the job was in no set),
# in the same transaction: the count can never disagree with the index. Which set held the job
# comes from the ZREM replies the move makes anyway, so counting costs one HINCRBY.
# An end (done, failed, canceled) is also published on the job's channel (ARGV[5], "" for
# none), for requests waiting on it. And when the caller saved a webhook delivery job for this
# end (ARGV[6], "" for none), a real change pushes it onto its queue and starts the delivery
# state afresh (for ARGV[7] seconds); an end recorded twice (RQ writes a stop twice) deletes
# the second one unqueued, so each end is delivered exactly once.
# KEYS: job hash, index marker, transitions hash, index clock, the index sets in Status order;
# with a delivery: its queue list, its job hash, the delivery state hash.
# ARGV: job id, RQ status, target set position (1-based), schema, channel, delivery job id,
# delivery state TTL.
# The status names are written into the script (`names`, in Status order), not sent each call.
RECORD_LUA = (
    "local names = {"
    + ", ".join(f"'{status.value}'" for status in STATUSES)
    + "}"
    + POSITION_LUA
    + """
local first = 5
local last = first + #names - 1
local position = tonumber(ARGV[3])
local target = position + first - 1
local from = 'new'
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = first, last do
  if i ~= target and redis.call('ZREM', KEYS[i], ARGV[1]) == 1 then
    from = names[i - first + 1]
  end
end
local position_now = next_position(KEYS[4])
local changed = redis.call('ZADD', KEYS[target], string.format('%.0f', position_now), ARGV[1]) == 1
if changed then
  redis.call('HINCRBY', KEYS[3], from .. ':' .. names[position], 1)
end
redis.call('HSET', KEYS[2], 'schema', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], names[position])
end
if ARGV[6] ~= '' then
  if changed then
    redis.call('RPUSH', KEYS[last + 1], ARGV[6])
    redis.call('DEL', KEYS[last + 3])
    redis.call('HSET', KEYS[last + 3], 'delivery', ARGV[6], 'state', 'pending', 'attempts', 0)
    redis.call('EXPIRE', KEYS[last + 3], ARGV[7])
  else
    redis.call('DEL', KEYS[last + 2])
  end
end
"""
)

# Read the first batch of each status set in KEYS from position ARGV[1] to ARGV[2], at most
# ARGV[3] ids each (and, when ARGV[4] is "1", count each set's entries in that range), as one
# atomic step that Redis runs even when out of memory: over maxmemory it refuses every command
# queued in a MULTI, reads included, but runs a script declared without writes. Used only then;
# otherwise the MULTI's plain replies are cheaper.
FIRST_READ_LUA = """#!lua flags=no-writes
local replies = {}
for i, key in ipairs(KEYS) do
  replies[i] = redis.call('ZRANGEBYSCORE', key, ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
end
if ARGV[4] == '1' then
  for i, key in ipairs(KEYS) do
    replies[#KEYS + i] = redis.call('ZCOUNT', key, ARGV[1], ARGV[2])
  end
end
return replies
"""

# Open a read of the index (KEYS[1] the index marker, KEYS[2] the queue list, KEYS[3] the
# index clock): `open()` returns Redis time (µs), whether the marker exists, the queue's length,
# and the read's fence. The fence is the later of Redis time - 1 µs and the index clock; when it
# is the former, it becomes the clock. So every entry recorded before the read lies at or before
# the fence and every change recorded after it lies above it, even should Redis's clock step
# back in between (POSITION_LUA places a change after the clock). `low()` is where the read
# starts (exclusive): ARGV[1], a position, or else ARGV[2] µs before Redis time. `text()` writes
# a number as Redis reads it back exactly (Lua would cut a reply number to an integer anyway,
# but a string says so). Shared by the window and page scripts, whose first six ARGV follow.
OPEN_LUA = """
local function open()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local marker = redis.call('EXISTS', KEYS[1])
  local length = redis.call('LLEN', KEYS[2])
  local clock = tonumber(redis.call('GET', KEYS[3]) or '0')
  local fence = now - 1
  if clock >= fence then
    fence = clock
  elseif marker == 1 then
    redis.call('SET', KEYS[3], string.format('%.0f', fence))
  end
  return now, marker, length, fence
end
local function low(now)
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  return now - tonumber(ARGV[2]) - 1
end
local function text(n) return string.format('%.0f', n) end
"""

# Read a small window whole in the round trip that opens the read: one round trip where a fence
# script and a MULTI took two (docs/benchmarks.md, "HTTP floor"). Returns {now, marker, queue
# length, fence, low, {count per set}} and, when the window is small, the ids of each set in
# KEYS[4..] from low (exclusive) to the fence. Small: at most ARGV[4] ids in all, and fewer
# than ARGV[3] (the batch) in each set. A larger window gets the counts alone (ZCOUNT is
# O(log n)) and is read by the caller's MULTI, up to this fence: through Lua tables, a reply
# of 10^4 ids costs Redis about twice the plain replies. No ids without the marker either.
WINDOW_LUA = (
    OPEN_LUA
    + """
local now, marker, length, fence = open()
local start = low(now)
local from, to = '(' .. text(start), text(fence)
local counts, total, small = {}, 0, marker == 1
for i = 4, #KEYS do
  local n = redis.call('ZCOUNT', KEYS[i], from, to)
  counts[#counts + 1] = n
  total = total + n
  if n >= tonumber(ARGV[3]) then small = false end
end
local reply = {text(now), marker, length, text(fence), text(start), counts}
if small and total <= tonumber(ARGV[4]) then
  for i = 4, #KEYS do
    reply[#reply + 1] = redis.call('ZRANGEBYSCORE', KEYS[i], from, to)
  end
end
return reply
"""
)

# Read one page in the round trip that opens the read. Returns {now, marker, queue length,
# fence, low, {for each set in KEYS[4..], its first ARGV[3] entries from low (exclusive) to the
# fence, as id, score, id, score...}} and, when ARGV[4] is not '', {each set's entries from
# ARGV[4] (a position, exclusive; 'low' for the page's own start) to the fence}. A page never
# reads more than 1,000 entries of a set (feed.MAX_LIMIT, PAGE_SCAN). Nothing but the opening
# without the marker.
PAGE_LUA = (
    OPEN_LUA
    + """
local now, marker, length, fence = open()
local start = low(now)
local reply = {text(now), marker, length, text(fence), text(start)}
if marker == 0 then return reply end
local from, to = '(' .. text(start), text(fence)
local ranges = {}
for i = 4, #KEYS do
  ranges[#ranges + 1] = redis.call(
    'ZRANGEBYSCORE', KEYS[i], from, to, 'WITHSCORES', 'LIMIT', 0, ARGV[3])
end
reply[6] = ranges
if ARGV[4] ~= '' then
  local counted = from
  if ARGV[4] ~= 'low' then counted = '(' .. ARGV[4] end
  local counts = {}
  for i = 4, #KEYS do
    counts[#counts + 1] = redis.call('ZCOUNT', KEYS[i], counted, to)
  end
  reply[7] = counts
end
return reply
"""
)

_INDEX_KEYS = keys.status_index_keys()


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery job saved in the same pipeline, to be queued if the end is new."""

    queue_key: str
    job_id: str
    job_key: str
    ttl: int


def record(
    pipeline: Pipeline,
    job_id: str,
    rq_status: JobStatus | str,
    delivery: Delivery | None = None,
) -> None:
    """Queue the recording of `job_id` now having `rq_status` inside `pipeline`'s MULTI (and the
    queueing of `delivery`, when this records a new end)."""
    status = from_rq(rq_status)
    script_keys = [
        keys.rq_job_key(job_id),
        keys.marker_key(),
        keys.transitions_key(),
        keys.clock_key(),
        *_INDEX_KEYS,
    ]
    channel = keys.job_ended_channel(job_id) if status in FINAL_STATUSES else ""
    args: list[str | int] = [
        job_id,
        JobStatus(rq_status).value,
        STATUSES.index(status) + 1,
        keys.SCHEMA_VERSION,
        channel,
        "",
        0,
    ]
    if delivery is not None:
        script_keys += [delivery.queue_key, delivery.job_key, keys.delivery_state_key(job_id)]
        args[5:] = [delivery.job_id, delivery.ttl]
    # Plain EVAL, not EVALSHA: redis-py would spend a SCRIPT EXISTS round trip per pipeline
    # on a registered script, and a NOSCRIPT error inside MULTI (after a Redis restart)
    # would let RQ's half of the transaction commit without ours.
    pipeline.eval(RECORD_LUA, len(script_keys), *script_keys, *args)


def forget(pipeline: Pipeline, *job_ids: str) -> None:
    """Queue the removal of `job_ids` from every status set inside `pipeline`'s MULTI."""
    if job_ids:
        for key in _INDEX_KEYS:
            pipeline.zrem(key, *job_ids)


def parse_transitions(raw: dict[bytes, bytes]) -> dict[tuple[str, str], int]:
    """Return {(from, to): count} from the transitions hash as HGETALL returns it."""
    counts: dict[tuple[str, str], int] = {}
    for field, value in raw.items():
        source, _, target = field.decode().partition(":")
        counts[(source, target)] = int(value)
    return counts


# The ids per status of one read of the index, as Redis gave them (raw bytes), in Status order.
Batch = list[tuple[Status, list[bytes]]]


@dataclass(frozen=True)
class WindowIds:
    """The ids (raw bytes) per status whose latest change falls in a window; the queue length."""

    ids: Batch
    queue_length: int


@dataclass(frozen=True)
class Window:
    """A window's first read (`ids`), the queue length, and the reads that remain, if any.

    When `complete`, `ids` is the whole window, one consistent snapshot; else `rest` yields the
    remaining ids, one status set's batch at a time (docs/index-layout.md, "Reading a window").
    `fence` is the read's position (µs): every entry read lies at or before it, every change
    recorded after the read after it. `counts`, when asked for, holds the window's entries
    per status, counted in the first read.
    """

    ids: Batch
    queue_length: int
    complete: bool
    rest: Iterator[Batch]
    fence: int
    counts: dict[Status, int] | None = None


@dataclass(frozen=True)
class Page:
    """One page of the change feed: `ids` in position order, each with its status at the read.

    `end` is the position (µs) of the last entry the page looked at, None when the page reached
    its `fence` (nothing more to read now): a next page starts just after `end`.
    """

    ids: list[tuple[bytes, Status]]
    end: int | None
    fence: int
    queue_length: int
    # The position the page read after (exclusive): a start in seconds, resolved.
    start: int
    counts: dict[Status, int] | None = None


@dataclass(frozen=True)
class Start:
    """Where a read of the index starts: the last `seconds` before the read (inclusive), or
    just after the position `after` (µs, exclusive)."""

    seconds: float = 0.0
    after: int | None = None

    def exclusive(self, now_micros: int) -> int:
        """Return the position (µs) entries must lie after to be read."""
        if self.after is not None:
            return self.after
        return window_start(now_micros, self.seconds) - 1


@dataclass(frozen=True)
class Facets:
    """What a listed job must also be: of this RQ queue, of this task (None: any)."""

    queue: str | None = None
    task: str | None = None

    def __bool__(self) -> bool:
        return self.queue is not None or self.task is not None


def window_start(now_micros: int, since_seconds: float) -> int:
    """Return the lowest score (µs, inclusive) of the last `since_seconds` before `now_micros`."""
    return now_micros - int(since_seconds * MICROS)


def fence_of(now_micros: int, clock: bytes | None) -> int:
    """Return the position a read at Redis time `now_micros` reads up to, given the index clock.

    Every entry already recorded lies at or before it (the clock holds the latest position), and
    every change recorded later lies after it: its position is at least its Redis time (at
    least `now_micros`, the clock never stepping back within the read) and above the clock.
    """
    return max(now_micros - 1, int(clock or 0))


class StatusIndex:
    """Read and write the status index through its Lua scripts, on one Redis connection."""

    def __init__(self, connection: Redis, retention_seconds: int) -> None:
        self.connection = connection
        self.retention_seconds = retention_seconds
        self._trim = connection.register_script(TRIM_LUA)
        self._first_read = connection.register_script(FIRST_READ_LUA)
        self._window = connection.register_script(WINDOW_LUA)
        self._page = connection.register_script(PAGE_LUA)

    def _read_keys(self, queue_name: str, sets: Sequence[str]) -> list[str]:
        """Return the keys of a read script: marker, queue list, clock, then the sets read."""
        return [keys.marker_key(), keys.rq_queue_key(queue_name), keys.clock_key(), *sets]

    def _run_read(
        self,
        script: Script,
        queue_name: str,
        chosen: list[tuple[Status, str]],
        args: list[str | int],
    ) -> tuple[int, int, int, list[Any]]:
        """Run a read script (OPEN_LUA's opening first); return the queue length, the fence, the
        read's start (exclusive) and the rest of its reply. Raise if there is no index here."""
        reply = script(keys=self._read_keys(queue_name, [key for _, key in chosen]), args=args)
        _require_marker(reply[1])
        return int(reply[2]), int(reply[3]), int(reply[4]), reply[5:]

    def _open_unrecorded(self, queue_name: str) -> tuple[int, int, int]:
        """Return the Redis time of a read, its fence and the queue length, without recording
        the fence: over maxmemory, where a read script's SET of the clock is refused."""
        # Then only a Redis clock stepping back before the fence could place a change below it.
        marker, queue, clock = self._read_keys(queue_name, [])
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.exists(marker)
            pipe.llen(queue)
            pipe.get(clock)
            now_reply, found, queue_length, clock_value = pipe.execute()
        _require_marker(found)
        now = time_micros(now_reply)
        return now, fence_of(now, clock_value), int(queue_length)

    def window(
        self,
        since_seconds: float,
        queue_name: str,
        batch: int | None = None,
        stream_batch: int | None = None,
        *,
        after: int | None = None,
        statuses: Sequence[Status] = STATUSES,
        counts: bool = False,
    ) -> Window:
        """Return the first batch of ids per status changed in the last `since_seconds` (or
        after the position `after`), of `statuses` only, up to the read's fence.

        `batch` bounds the first read of each status set (WINDOW_BATCH), `stream_batch` each
        later one (STREAM_BATCH, or `batch` when smaller). With `counts`, the first read also
        counts each set's entries in the window.
        """
        size = WINDOW_BATCH if batch is None else batch
        later = min(size, STREAM_BATCH) if stream_batch is None else stream_batch
        chosen = [(status, keys.status_index_key(status)) for status in statuses]
        start = Start(since_seconds, after)
        try:
            queue_length, fence, after, read = self._run_read(
                self._window, queue_name, chosen, [*_start_args(start), size, SMALL_WINDOW]
            )
        except OutOfMemoryError:
            now, fence, queue_length = self._open_unrecorded(queue_name)
            low = f"({start.exclusive(now)}"
        else:
            low = f"({after}"
            if len(read) > 1:
                # A small window, read whole with its opening: one consistent snapshot.
                return Window(
                    ids=[(s, ids) for (s, _), ids in zip(chosen, read[1:], strict=True)],
                    queue_length=queue_length,
                    complete=True,
                    rest=iter(()),
                    fence=fence,
                    counts=_counts(chosen, read[0]) if counts else None,
                )
        # A larger window: plain replies cost Redis half of what a script's do, and one MULTI
        # keeps the first batches one consistent snapshot.
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                for _, key in chosen:
                    pipe.zrangebyscore(key, low, fence, start=0, num=size)
                if counts:
                    for _, key in chosen:
                        pipe.zcount(key, low, fence)
                replies = pipe.execute()
        except OutOfMemoryError:
            replies = self._first_read(
                keys=[key for _, key in chosen], args=[low, fence, size, int(counts)]
            )
        ranges, counted = replies[: len(chosen)], replies[len(chosen) :]
        ids: Batch = []
        unread: list[tuple[Status, str]] = []
        for (status, key), members in zip(chosen, ranges, strict=True):
            if len(members) < size:
                ids.append((status, members))
            else:
                # Read again from the start in batches that end at a score boundary: this batch
                # cannot say where its last score's entries begin without every score (WITHSCORES
                # costs Redis about seven times the plain reply).
                ids.append((status, []))
                unread.append((status, key))
        rest = self._rest(unread, low, fence, later)
        return Window(
            ids=ids,
            queue_length=queue_length,
            complete=not unread,
            rest=rest,
            fence=fence,
            counts=_counts(chosen, counted) if counts else None,
        )

    def _rest(
        self, unread: list[tuple[Status, str]], low: str, fence: int, size: int
    ) -> Iterator[Batch]:
        """Yield each unread set's window (low, fence] in batches of at most `size` ids."""
        # Up to the fence, not +inf: a job that changes during the read gets a position above
        # it, so no read meets it twice. Each batch is every entry from `start` up to, not
        # including, the score of the size-th entry, so the next starts at a score's first
        # entry: no offset, and nothing to remember of what was sent.
        for status, key in unread:
            start: float | str = low
            while True:
                edge = self.connection.zrangebyscore(
                    key, start, fence, start=size - 1, num=1, withscores=True
                )
                if not edge:
                    # Fewer than a batch left; none can arrive, new positions being above it.
                    members = self._ids(key, start, fence)
                    if members:
                        yield [(status, members)]
                    break
                score = float(edge[0][1])
                # repr() of a float is the shortest text that reads back as the same double.
                above = f"({score!r}"
                members = self._ids(key, start, above)
                if members:
                    start = score
                else:
                    # One score fills the whole batch: read that score whole, go on above it.
                    # Only entries written straight into a set can share one (positions are
                    # unique), but the read must not stall on them.
                    members = self._ids(key, score, score)
                    start = above
                yield [(status, members)]

    def _ids(self, key: str, low: float | str, high: float | str) -> list[bytes]:
        """Return the ids of the set `key` scored from `low` to `high`, as Redis gave them."""
        return cast("list[bytes]", self.connection.zrangebyscore(key, low, high))

    def window_ids(self, since_seconds: float, queue_name: str) -> WindowIds:
        """Return the raw ids per status changed in the last `since_seconds`, by Redis time."""
        window = self.window(since_seconds, queue_name)
        ids = {status: list(members) for status, members in window.ids}
        for batch in window.rest:
            for status, members in batch:
                ids[status].extend(members)
        return WindowIds(ids=list(ids.items()), queue_length=window.queue_length)

    def page(
        self,
        start: Start,
        queue_name: str,
        limit: int,
        *,
        statuses: Sequence[Status] = STATUSES,
        facets: Facets = Facets(),
        counts: bool = False,
        counted_from: int | None = None,
    ) -> Page:
        """Return up to `limit` jobs of `statuses` (and `facets`) whose latest change lies after
        `start` and at or before the read's fence, in position order.

        A page looks at no more than `limit` entries, or PAGE_SCAN with `facets` (whose jobs are
        read to be checked). With `counts`, also count each status set's entries from
        `counted_from` (a position, exclusive; the page's start when None) to the fence.
        """
        scan = max(limit, PAGE_SCAN) if facets else limit
        chosen = [(status, keys.status_index_key(status)) for status in statuses]
        counts_arg = "" if not counts else "low" if counted_from is None else str(counted_from)
        try:
            queue_length, fence, after, read = self._run_read(
                self._page, queue_name, chosen, [*_start_args(start), scan, counts_arg]
            )
        except OutOfMemoryError:
            ranges, counted, fence, queue_length, after = self._page_unrecorded(
                start, queue_name, chosen, scan, counts, counted_from
            )
        else:
            ranges = [_pairs(flat) for flat in read[0]]
            counted = read[1] if counts else []
        # The `scan` lowest entries of all the sets are among the `scan` lowest of each.
        merged = sorted(
            (int(score), member, status)
            for (status, _), entries in zip(chosen, ranges, strict=True)
            for member, score in entries
        )
        looked = merged[:scan]
        # Every set gave fewer than asked: nothing lies beyond them up to the fence.
        whole = len(merged) <= scan and all(len(entries) < scan for entries in ranges)
        keep = self.matching([member for _, member, _ in looked], facets) if facets else None
        ids: list[tuple[bytes, Status]] = []
        consumed = len(looked)
        for i, (_, member, status) in enumerate(looked):
            if keep is None or keep[i]:
                ids.append((member, status))
                if len(ids) == limit:
                    consumed = i + 1
                    break
        end: int | None = None
        if consumed < len(looked) or not whole:
            end = looked[consumed - 1][0]
            if _shared(end, merged[consumed:], ranges, scan):
                ids += self._rest_of_position(end, chosen, looked[:consumed], facets)
        return Page(
            ids=ids,
            end=end,
            fence=fence,
            queue_length=queue_length,
            start=after,
            counts=_counts(chosen, counted) if counts else None,
        )

    def _page_unrecorded(
        self,
        start: Start,
        queue_name: str,
        chosen: list[tuple[Status, str]],
        scan: int,
        counts: bool,
        counted_from: int | None,
    ) -> tuple[list[Any], list[Any], int, int, int]:
        """Read what PAGE_LUA reads without recording the fence (over maxmemory); return the
        ranges, the counts, the fence, the queue length and the page's start."""
        now, fence, queue_length = self._open_unrecorded(queue_name)
        after = start.exclusive(now)
        counts_from = (after if counted_from is None else counted_from) if counts else None

        def page_reads(pipe: Pipeline) -> None:
            for _, key in chosen:
                pipe.zrangebyscore(key, f"({after}", fence, start=0, num=scan, withscores=True)
            if counts_from is not None:
                for _, key in chosen:
                    pipe.zcount(key, f"({counts_from}", fence)

        # Without a MULTI (Redis refuses one over maxmemory) the same reads are just as right:
        # an entry that moves between them moves above the fence.
        replies = self._reads(page_reads)
        return replies[: len(chosen)], replies[len(chosen) :], fence, queue_length, after

    def _rest_of_position(
        self,
        position: int,
        chosen: list[tuple[Status, str]],
        listed: list[tuple[int, bytes, Status]],
        facets: Facets,
    ) -> list[tuple[bytes, Status]]:
        """Return the entries at `position` a page has not listed yet, so that it ends after
        the position whole: the next page starts after it."""
        # Positions are unique since the index clock; entries written before it (an upgraded
        # index: a repair step scored up to 200 at one time) can share one.
        seen = {member for at, member, _ in listed if at == position}

        def position_reads(pipe: Pipeline) -> None:
            for _, key in chosen:
                pipe.zrangebyscore(key, position, position)

        # Without a MULTI the sets still hold the same entries there: no change is ever placed
        # at an old position.
        replies = self._reads(position_reads)
        rest = [
            (member, status)
            for (status, _), members in zip(chosen, replies, strict=True)
            for member in members
            if member not in seen
        ]
        if rest and facets:
            keep = self.matching([member for member, _ in rest], facets)
            rest = [entry for entry, ok in zip(rest, keep, strict=True) if ok]
        return rest

    def _reads(self, queue: Callable[[Pipeline], None]) -> list[Any]:
        """Run the reads `queue` puts on a pipeline in one MULTI; return their replies.

        Over maxmemory Redis refuses a MULTI even of reads: then they run one after the other,
        which each caller says is just as right for its reads.
        """
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                queue(pipe)
                replies: list[Any] = pipe.execute()
        except OutOfMemoryError:
            with self.connection.pipeline(transaction=False) as pipe:
                queue(pipe)
                replies = pipe.execute()
        return replies

    def matching(self, ids: Sequence[bytes], facets: Facets) -> list[bool]:
        """Return, for each of `ids`, whether its job is of `facets`' queue and task (a job gone
        is of none)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.rq_job_key(job_id.decode()), "origin", "meta")
            rows = pipe.execute()
        return [_of_facets(origin, meta, facets) for origin, meta in rows]

    def mark(self) -> None:
        """Write the index marker with the schema version."""
        self.connection.hset(keys.marker_key(), "schema", keys.SCHEMA_VERSION)

    def trim_expired(self, max_batches: int = 100) -> int:
        """Remove final entries older than the retention in bounded batches; return how many."""
        removed = 0
        for status in FINAL_STATUSES:
            key = keys.status_index_key(status)
            for _ in range(max_batches):
                count = int(self._trim(keys=[key], args=[self.retention_seconds, TRIM_BATCH]))
                removed += count
                if count < TRIM_BATCH:
                    break
        return removed


def _shared(
    position: int,
    unlisted: list[tuple[int, bytes, Status]],
    ranges: list[list[tuple[bytes, float]]],
    scan: int,
) -> bool:
    """Return whether entries a page did not list may lie at `position`, its last one's."""
    if unlisted and unlisted[0][0] == position:
        return True
    # A set read to its limit may hold more entries at the position of its last one.
    return any(len(entries) == scan and int(entries[-1][1]) == position for entries in ranges)


def _start_args(start: Start) -> list[str | int]:
    """Return a read script's ARGV[1] and ARGV[2]: the position to read after, or the span (µs)
    before Redis time to read."""
    if start.after is not None:
        return [start.after, 0]
    return ["", int(start.seconds * MICROS)]


def _require_marker(found: Any) -> None:
    if not int(found):
        raise IndexNotFoundError("Jobs directory not found")


def _pairs(flat: list[bytes]) -> list[tuple[bytes, float]]:
    """Return [(id, score)] from a script's WITHSCORES reply [id, score, id, score...]."""
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]


def _counts(chosen: list[tuple[Status, str]], counted: list[Any]) -> dict[Status, int]:
    return {status: int(n) for (status, _), n in zip(chosen, counted, strict=True)}


def _of_facets(origin: bytes | None, meta: bytes | None, facets: Facets) -> bool:
    if origin is None:
        return False
    if facets.queue is not None and origin.decode(errors="replace") != facets.queue:
        return False
    if facets.task is None:
        return True
    try:
        # RQ's own encoding of a job's meta (pickle, as every job the service makes uses).
        task = DefaultSerializer.loads(meta)["task"] if meta else None
    except Exception as exc:  # a job of someone else's serializer: of no task of ours
        logger.debug("no task readable in a job's meta: %r", exc)
        return False
    return bool(task == facets.task)
