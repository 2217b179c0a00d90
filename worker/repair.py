"""Drift repair: bring the status index back to what RQ says, whatever changed RQ behind its back.

The service's own classes keep the index exact at once. RQ's plain classes, the `rq` command,
rq-dashboard or a user's own code may not; a repair pass then puts every job right within one
interval (docs/reliability.md):

- a job the index lists but RQ no longer has leaves the index;
- a job whose status in RQ maps to another index status moves there;
- a job RQ holds in a queue or registry but the index lacks is added (a final one only while
  its latest change lies within the retention, or the trim would only remove it again).

A pass walks the five index sets, then each of RQ's queues and registries, in bounded steps:
each step is one Lua script call over at most REPAIR_BATCH ids, so no command blocks Redis for
long, and each id is checked against RQ's own `status` field inside the script, atomically.
A repaired entry is scored with the Redis time of its repair, like any recorded change: a poller
sees it as a change, once. Passes start at most once per `REPAIR_INTERVAL` across every worker
(a lease in Redis); `python -m worker` runs them in a child process of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from shared import keys
from shared.index import FINAL_STATUSES, POSITION_LUA, REPAIR_KINDS, STATUSES, StatusIndex
from shared.logs import configure_logging
from shared.redis import connect
from shared.settings import Settings
from shared.status import FROM_RQ, Status

logger = logging.getLogger(__name__)

# Ids checked per script call: under a millisecond of Redis time (bench/repair.py).
REPAIR_BATCH = 200
# The share of its own wall time a pass may keep Redis busy: after each call it rests half as
# long as the call took, so other clients get at least a third of Redis, whatever the index
# size, and a pass over 10^6 jobs still ends well within the bound (bench/repair.py).
REPAIR_DUTY = 2 / 3
# How often a repairer waiting for the lease looks again (s).
LEASE_POLL = 1.0
# While a pass runs, its lease is kept at least this long (s), renewed about every second, so
# a pass longer than the interval never has a second one start beside it.
LEASE_GRACE = 10

# Keep the lease KEYS[1] for at least ARGV[2] seconds, if ARGV[1] still holds it; return 1 if
# it does, 0 if the lease has gone to someone else (or lapsed).
RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# Check up to ARGV[4] ids read from KEYS[8] from cursor ARGV[3], each against RQ's own status.
# ARGV[5] says what KEYS[8] is: "index", an index set, or "registry", one of RQ's registries
# (sorted sets, read with ZSCAN); "wip", RQ's started registry (entries "<job id>:<execution
# id>"); "list", a queue (read by position). Guarantees, per id and atomically: the job's single
# index entry sits in the set its RQ status maps to, or nowhere when RQ has no such job; a move
# or an addition is placed now (the index clock's next position: POSITION_LUA) and counted in
# the transitions hash like any recorded change.
# ARGV[6] is the index set (position) the source implies. Read from an index set, an id whose
# RQ status maps to that very set is right without a ZSCORE; read from RQ's queue or registry,
# an id already in the implied set is left to the index sets' own check, without an HGET:
# each job then costs one lookup per source, not two.
# What it put right is added to the repairs hash in the same step.
# KEYS: the index sets in Status order, the transitions hash, the repairs hash, the key to read,
# the index clock.
# ARGV: RQ's job key prefix, retention (s), cursor, count, kind, implied position.
# Returns {next cursor ("0" at the end), ids read, removed, moved, added}.
REPAIR_LUA = (
    "local names = {"
    + ", ".join(f"'{status.value}'" for status in STATUSES)
    + "}\nlocal positions = {"
    + ", ".join(f"['{rq.value}'] = {STATUSES.index(api) + 1}" for rq, api in FROM_RQ.items())
    + "}\nlocal final = {"
    + ", ".join("true" if status in FINAL_STATUSES else "false" for status in STATUSES)
    + "}"
    + POSITION_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prefix, retention = ARGV[1], tonumber(ARGV[2])
local removed, moved, added = 0, 0, 0

-- Seconds since the epoch of one of RQ's timestamps ("2026-11-30T07:45:00.123456Z"), or nil.
local function epoch_seconds(stamp)
  local y, m, d, hh, mm, ss = string.match(stamp, '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)')
  if not y then return nil end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

-- Whether the latest timestamp RQ keeps for the job lies within the retention.
local function recent(job)
  local stamps = redis.call('HMGET', job, 'ended_at', 'started_at', 'enqueued_at', 'created_at')
  for _, stamp in ipairs(stamps) do
    local seconds = stamp and epoch_seconds(stamp)
    if seconds and seconds * 1000000 >= now - retention * 1000000 then return true end
  end
  return false
end

local implied, from_index = tonumber(ARGV[6]), ARGV[5] == 'index'

local function reconcile(id)
  if not from_index and redis.call('ZSCORE', KEYS[implied], id) then return end
  local job = prefix .. id
  -- RQ reads a hash without `data` as no job at all (Job.restore: "Unexpected job format"),
  -- such as the stub a late status write leaves after a deletion: its entries go.
  if redis.call('HEXISTS', job, 'data') == 0 then
    for i = 1, #names do removed = removed + redis.call('ZREM', KEYS[i], id) end
    return
  end
  local position = positions[redis.call('HGET', job, 'status') or '']
  -- A job without a status RQ knows (none: RQ reads it as "created"; or a future one) keeps
  -- whatever entry it has.
  if not position or (from_index and position == implied) then return end
  if redis.call('ZSCORE', KEYS[position], id) then
    -- Right where RQ says, and also in the set being read: a second entry, which goes.
    if from_index then removed = removed + redis.call('ZREM', KEYS[implied], id) end
    return
  end
  local from = nil
  for i = 1, #names do
    if i ~= position and redis.call('ZREM', KEYS[i], id) == 1 then from = names[i] end
  end
  if not from and final[position] and not recent(job) then return end
  redis.call('ZADD', KEYS[position], string.format('%.0f', next_position(KEYS[#names + 4])), id)
  redis.call('HINCRBY', KEYS[#names + 1], (from or 'new') .. ':' .. names[position], 1)
  if from then moved = moved + 1 else added = added + 1 end
end

local source, kind, cursor, count = KEYS[#names + 3], ARGV[5], ARGV[3], tonumber(ARGV[4])
local ids, next_cursor = {}, '0'
if kind == 'list' then
  -- Read from the tail: workers pop at the head, so no unread id moves past the cursor; a push
  -- at the tail only makes one id be read twice.
  local start = tonumber(cursor)
  ids = redis.call('LRANGE', source, -(start + count), -(start + 1))
  if #ids == count then next_cursor = tostring(start + count) end
elseif kind == 'index' or kind == 'registry' or kind == 'wip' then
  local reply = redis.call('ZSCAN', source, cursor, 'COUNT', count)
  next_cursor = reply[1]
  for i = 1, #reply[2], 2 do
    local id = reply[2][i]
    if kind == 'wip' then id = string.match(id, '^[^:]+') end
    ids[#ids + 1] = id
  end
else
  return redis.error_reply('unknown source kind ' .. kind)
end
for _, id in ipairs(ids) do reconcile(id) end
local counts = {removed = removed, moved = moved, added = added}
for field, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', KEYS[#names + 2], field, n) end
end
return {next_cursor, #ids, removed, moved, added}
"""
)

# RQ's registries of each queue, read like the index sets (the started one has its own entries),
# and the RQ status of the jobs each holds.
ZSET_REGISTRIES = (
    (FinishedJobRegistry, JobStatus.FINISHED),
    (FailedJobRegistry, JobStatus.FAILED),
    (DeferredJobRegistry, JobStatus.DEFERRED),
    (ScheduledJobRegistry, JobStatus.SCHEDULED),
    (CanceledJobRegistry, JobStatus.CANCELED),
)


@dataclass
class PassReport:
    """What one repair pass read, changed and cost."""

    checked: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPAIR_KINDS, 0))
    trimmed: int = 0
    calls: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0
    longest_call_seconds: float = 0.0
    complete: bool = True

    @property
    def changed(self) -> int:
        """Return how many entries the pass removed, moved or added."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class Source:
    """A key a pass reads ids from: how to read it, and the status its ids should have."""

    key: str
    kind: str
    implied: Status


def sources(connection: Redis) -> Iterator[Source]:
    """Yield the index sets, then every queue and registry RQ knows of (but the webhook
    delivery queues: their jobs are RQ's alone, never in the index)."""
    for status in STATUSES:
        yield Source(keys.status_index_key(status), "index", status)
    members: set[bytes] = connection.smembers(Queue.redis_queues_keys)  # type: ignore[assignment]
    for raw in sorted(members):
        queue_key = raw.decode()
        name = queue_key.removeprefix(Queue.redis_queue_namespace_prefix)
        if keys.is_webhook_queue(name):
            continue
        yield Source(queue_key, "list", Status.QUEUED)
        yield Source(StartedJobRegistry.key_template.format(name), "wip", Status.RUNNING)
        for registry, rq_status in ZSET_REGISTRIES:
            yield Source(registry.key_template.format(name), "registry", FROM_RQ[rq_status])


def repair_pass(
    index: StatusIndex,
    batch: int = REPAIR_BATCH,
    duty: float = REPAIR_DUTY,
    still_ours: Callable[[], bool] | None = None,
) -> PassReport:
    """Run one full repair pass over the index and RQ's queues and registries; report it.

    `still_ours`, asked about once a second, renews the pass's lease; when it answers False
    (the lease went to another worker), the pass stops where it is.
    """
    connection = index.connection
    script = connection.register_script(REPAIR_LUA)
    index_keys = [*keys.status_index_keys(), keys.transitions_key(), keys.repairs_key()]
    report = PassReport()
    started = renewed = time.perf_counter()
    for source in sources(connection):
        implied = STATUSES.index(source.implied) + 1
        cursor = "0"
        while True:
            call_started = time.perf_counter()
            reply = script(
                keys=[*index_keys, source.key, keys.clock_key()],
                args=[
                    Job.redis_job_namespace_prefix,
                    index.retention_seconds,
                    cursor,
                    batch,
                    source.kind,
                    implied,
                ],
            )
            took = time.perf_counter() - call_started
            report.busy_seconds += took
            report.longest_call_seconds = max(report.longest_call_seconds, took)
            if duty < 1:
                time.sleep(took * (1 - duty) / duty)
            report.calls += 1
            cursor = reply[0].decode()
            report.checked += int(reply[1])
            for name, value in zip(REPAIR_KINDS, reply[2:], strict=True):
                report.counts[name] += int(value)
            if still_ours is not None and time.perf_counter() - renewed >= 1:
                renewed = time.perf_counter()
                if not still_ours():
                    report.seconds = renewed - started
                    report.complete = False
                    return report
            if cursor == "0":
                break
    report.trimmed = index.trim_expired()
    report.seconds = time.perf_counter() - started
    return report


def repair_when_due(index: StatusIndex, interval: int, owner: str) -> PassReport | None:
    """Run a pass if none started in the last `interval` seconds on any worker; report it."""
    lease = keys.repair_lease_key()
    if not index.connection.set(lease, owner, nx=True, ex=interval):
        return None
    renew = index.connection.register_script(RENEW_LUA)
    report = repair_pass(
        index, still_ours=lambda: bool(renew(keys=[lease], args=[owner, LEASE_GRACE]))
    )
    if not report.complete:
        logger.warning("repair pass stopped: its lease went to another worker")
    log = logger.info if report.changed else logger.debug
    log(
        "repair pass: %d ids checked, %d removed, %d moved, %d added, %d trimmed in %.2fs",
        report.checked,
        *report.counts.values(),
        report.trimmed,
        report.seconds,
        extra={"repair": {**report.counts, "checked": report.checked, "s": report.seconds}},
    )
    return report


def run_forever(settings: Settings, parent: int) -> None:
    """Repair the index every REPAIR_INTERVAL while the process `parent` lives (a child's loop)."""
    # Ctrl-C reaches the whole process group; the parent worker shuts down warmly, then ends
    # this loop itself (SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format)
    index = StatusIndex(connect(settings), settings.retention_seconds)
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    # A parent killed outright cannot stop its children; this loop notices and ends. (The pid
    # comes from the parent: one read here could already be init's, had it died meanwhile.)
    while os.getppid() == parent:
        try:
            repair_when_due(index, settings.repair_interval, owner)
        except RedisError as exc:
            logger.warning("repair pass interrupted, Redis unreachable or full: %s", exc)
        except Exception:
            # Whatever went wrong in one pass, the next one may go right: never stop repairing.
            logger.exception("repair pass failed")
        time.sleep(LEASE_POLL)
