"""The status index: one sorted set per status, each job in exactly one, scored by Redis time.

Layout (see docs/index-layout.md): `tkj:index:<status>` holds job ids scored by the Redis
server time of their latest state change, in integer microseconds. The index marker hash
(`keys.marker_key()`) says an index lives here; its absence answers "Jobs directory not found".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import OutOfMemoryError
from rq.job import JobStatus

from shared import keys
from shared.exceptions import IndexNotFoundError
from shared.redis import MICROS, time_micros
from shared.status import Status, from_rq

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

# Record one state change. Guarantees, atomically: RQ's own `status` field in the job hash,
# the job's single entry in the index (moved out of every other status set), and the index
# marker all change together, scored by this Redis server's clock, never the caller's.
# When the job's API status really changes (it was not already in the target set), it counts
# the change in the transitions hash, field "<from>:<to>" ("new" when the job was in no set),
# in the same transaction: the count can never disagree with the index. Which set held the job
# comes from the ZREM replies the move makes anyway, so counting costs one HINCRBY.
# An end (done, failed, canceled) is also published on the job's channel (ARGV[5], "" for
# none), for requests waiting on it. And when the caller saved a webhook delivery job for this
# end (ARGV[6], "" for none), a real change pushes it onto its queue and starts the delivery
# state afresh (for ARGV[7] seconds); an end recorded twice (RQ writes a stop twice) deletes
# the second one unqueued, so each end is delivered exactly once.
# KEYS: job hash, index marker, transitions hash, the index sets in Status order; with a
# delivery: its queue list, its job hash, the delivery state hash.
# ARGV: job id, RQ status, target set position (1-based), schema, channel, delivery job id,
# delivery state TTL.
# The status names are written into the script (`names`, in Status order), not sent each call.
RECORD_LUA = (
    "local names = {"
    + ", ".join(f"'{status.value}'" for status in STATUSES)
    + "}"
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local first = 4
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
local changed = redis.call('ZADD', KEYS[target], string.format('%.0f', now), ARGV[1]) == 1
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

# Read the first batch of every status set (KEYS, in Status order) from score ARGV[1] up, at
# most ARGV[2] ids each, as one atomic step that Redis runs even when out of memory: over
# maxmemory it refuses every command queued in a MULTI, reads included, but runs a script
# declared without writes. Used only then; otherwise the MULTI's plain replies are cheaper.
FIRST_READ_LUA = """#!lua flags=no-writes
local ranges = {}
for i, key in ipairs(KEYS) do
  ranges[i] = redis.call('ZRANGEBYSCORE', key, ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
end
return ranges
"""

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
    script_keys = [keys.rq_job_key(job_id), keys.marker_key(), keys.transitions_key(), *_INDEX_KEYS]
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
    """

    ids: Batch
    queue_length: int
    complete: bool
    rest: Iterator[Batch]


def window_start(now_micros: int, since_seconds: float) -> int:
    """Return the lowest score (µs, inclusive) of the last `since_seconds` before `now_micros`."""
    return now_micros - int(since_seconds * MICROS)


class StatusIndex:
    """Read and write the status index through its Lua scripts, on one Redis connection."""

    def __init__(self, connection: Redis, retention_seconds: int) -> None:
        self.connection = connection
        self.retention_seconds = retention_seconds
        self._trim = connection.register_script(TRIM_LUA)
        self._first_read = connection.register_script(FIRST_READ_LUA)
        self._index_keys = keys.status_index_keys()

    def window(
        self,
        since_seconds: float,
        queue_name: str,
        batch: int | None = None,
        stream_batch: int | None = None,
    ) -> Window:
        """Return the first batch of ids per status changed in the last `since_seconds`.

        `batch` bounds the first read of each status set (WINDOW_BATCH), `stream_batch` each
        later one (STREAM_BATCH, or `batch` when smaller).
        """
        size = WINDOW_BATCH if batch is None else batch
        later = min(size, STREAM_BATCH) if stream_batch is None else stream_batch
        # Two round trips beat one Lua script here: a script's reply of 10^4 ids passes through
        # Lua tables both ways and costs about twice as much as plain ZRANGEBYSCORE replies
        # (docs/benchmarks.md). MULTI keeps the five first batches one consistent snapshot.
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.exists(keys.marker_key())
            pipe.llen(keys.rq_queue_key(queue_name))
            now_reply, marker, queue_length = pipe.execute()
        if not marker:
            raise IndexNotFoundError("Jobs directory not found")
        now = time_micros(now_reply)
        low = window_start(now, since_seconds)
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                for key in self._index_keys:
                    pipe.zrangebyscore(key, low, "+inf", start=0, num=size)
                ranges = pipe.execute()
        except OutOfMemoryError:
            ranges = self._first_read(keys=self._index_keys, args=[low, size])
        ids: Batch = []
        unread: list[tuple[Status, str]] = []
        for status, key, members in zip(STATUSES, self._index_keys, ranges, strict=True):
            if len(members) < size:
                ids.append((status, members))
            else:
                # Read again from the start in batches that end at a score boundary: this batch
                # cannot say where its last score's entries begin without every score (WITHSCORES
                # costs Redis about seven times the plain reply).
                ids.append((status, []))
                unread.append((status, key))
        rest = self._rest(unread, low, now, later)
        return Window(ids=ids, queue_length=int(queue_length), complete=not unread, rest=rest)

    def _rest(
        self, unread: list[tuple[Status, str]], low: int, now: int, size: int
    ) -> Iterator[Batch]:
        """Yield each unread set's window [low, now] in batches of at most `size` ids."""
        # Up to `now`, not +inf: a job that changes during the read gets a score above `now`,
        # so no read meets it twice. Each batch is every entry from `start` up to, not
        # including, the score of the size-th entry, so the next starts at a score's first
        # entry: no offset, and nothing to remember of what was sent.
        for status, key in unread:
            start: float | str = low
            while True:
                edge = self.connection.zrangebyscore(
                    key, start, now, start=size - 1, num=1, withscores=True
                )
                if not edge:
                    # Fewer than a batch left; none can arrive, new scores being above `now`.
                    members = self._ids(key, start, now)
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
                    # The service scores at most 200 entries at one TIME (a repair step).
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
