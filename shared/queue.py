"""The RQ queue class both sides use: its jobs are tracked, and emptying it empties the index too.

Module-level, so RQ's own tools can name it: `rq empty --queue-class shared.queue.TrackedQueue`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job

from shared import keys, tasks
from shared.job import TrackedJob, tracked_subclass
from shared.status import Status

# How many waiting jobs one step of `empty()` removes: small enough never to block Redis.
EMPTY_BATCH = 500

# Keep the enqueue made just before, in the same MULTI, only while the queue stays within its
# limit and Redis keeps room for the results of every job it has accepted. Guarantees,
# atomically and without retries:
# - the queue never holds more than ARGV[2] jobs (0: no limit);
# - with a maxmemory set, a job is accepted only while Redis's used memory plus ARGV[5] bytes
#   for each job not yet finished (waiting, this one included, or running: KEYS[5]) stays
#   under ARGV[4] percent of maxmemory, so every accepted job can store a result of up to
#   ARGV[5] bytes (docs/reliability.md);
# - a refused job leaves no trace: its id leaves the list (RQ pushed it last, in this
#   transaction, so it is the tail, or the head for ARGV[3] = "1"), its hash is deleted, its
#   queued entry leaves the index and the "new:queued" transition it counted is taken back.
# Returns {verdict, queue length}: verdict 0 accepted, 1 the queue is full, 2 Redis's memory
# is; the length is the one after the enqueue, or the one found when refused.
# KEYS: queue list, job hash, transitions hash, queued index set, the queue's running registry.
# ARGV: job id, limit, at_front, memory percent (0: no memory check), bytes reserved per
# unfinished job.
GATE_LUA = f"""
local length = redis.call('LLEN', KEYS[1])
local verdict = 0
local limit = tonumber(ARGV[2])
if limit > 0 and length > limit then
  verdict = 1
elseif tonumber(ARGV[4]) > 0 then
  local info = redis.call('INFO', 'memory')
  local max = tonumber(string.match(info, '\\nmaxmemory:(%d+)'))
  if max > 0 then
    local used = tonumber(string.match(info, '\\nused_memory:(%d+)'))
    local unfinished = length + redis.call('ZCARD', KEYS[5])
    if (used + unfinished * tonumber(ARGV[5])) * 100 >= max * tonumber(ARGV[4]) then
      verdict = 2
    end
  end
end
if verdict == 0 then return {{0, length}} end
local pushed = ARGV[3] == '1' and 0 or -1
if redis.call('LINDEX', KEYS[1], pushed) ~= ARGV[1] then
  return redis.error_reply('the bounded enqueue did not push job ' .. ARGV[1])
end
if pushed == 0 then redis.call('LPOP', KEYS[1]) else redis.call('RPOP', KEYS[1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HINCRBY', KEYS[3], 'new:{Status.QUEUED.value}', -1) <= 0 then
  redis.call('HDEL', KEYS[3], 'new:{Status.QUEUED.value}')
end
return {{verdict, length - 1}}
"""

# Remove up to ARGV[2] waiting jobs from the head of the queue KEYS[1], as RQ's own `empty()`
# does (the job hash and its dependency keys, under the job key prefix ARGV[1]), and their
# entries from the index sets KEYS[2..]; return how many went. Each call is one atomic step,
# so RQ and the index agree between calls, and no call blocks Redis for long.
EMPTY_LUA = """
local ids = redis.call('LPOP', KEYS[1], ARGV[2])
if not ids then return 0 end
for _, id in ipairs(ids) do
  local job = ARGV[1] .. id
  redis.call('DEL', job, job .. ':dependents', job .. ':dependencies')
  for i = 2, #KEYS do redis.call('ZREM', KEYS[i], id) end
end
return #ids
"""


# Options of RQ's enqueue that are not the job's own (create_job refuses them).
ENQUEUE_ONLY = ("at_front", "pipeline", "unique")


class QueueFullError(Exception):
    """The queue already holds its maximum number of waiting jobs."""

    def __init__(self, length: int) -> None:
        super().__init__(f"queue holds {length} waiting jobs")
        self.length = length


class MemoryFullError(Exception):
    """Redis has no room left for another job and the results of those already accepted."""

    def __init__(self, length: int) -> None:
        super().__init__(f"Redis is too full to accept a job ({length} waiting)")
        self.length = length


@dataclass(frozen=True)
class MemoryBudget:
    """Accept jobs while used memory plus `result_bytes` per unfinished job stays under
    `percent` of Redis's maxmemory (no check while Redis has no maxmemory)."""

    percent: int
    result_bytes: int

    def admits(self, used_memory: int, maxmemory: int, unfinished: int) -> bool:
        """Return whether the gate would accept one more job (GATE_LUA decides; this reports)."""
        if not self.percent or not maxmemory:
            return True
        return (used_memory + unfinished * self.result_bytes) * 100 < maxmemory * self.percent


class TrackedQueue(Queue):
    """An RQ queue of tracked jobs, with a bounded enqueue and an `empty()` the index follows."""

    job_class = TrackedJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # RQ's command line passes its default job class explicitly; a tracked queue keeps
        # tracked jobs whatever it is given, or the index would never hear of them.
        kwargs["job_class"] = tracked_subclass(kwargs.get("job_class"), TrackedJob)
        super().__init__(*args, **kwargs)

    def create_task_job(self, task: tasks.Task, payload: tasks.Payload, **options: Any) -> Job:
        """Return a new job (not yet enqueued) running `task` on the checked `payload`.

        `options` are RQ's job options; `meta` is added to the task's name and progress.
        """
        meta = {"task": task.name, "progress": 0, **options.pop("meta", {})}
        return self.create_job(tasks.RUNNER, args=(task.name, payload), meta=meta, **options)

    def enqueue_task(self, name: str, payload: tasks.Payload, **options: Any) -> Job:
        """Enqueue the catalog's task `name` on `payload`; `options` are RQ's enqueue options."""
        task = tasks.get(name)
        job_options = {k: options.pop(k) for k in ENQUEUE_ONLY if k in options}
        job = self.create_task_job(task, task.validate(payload), **options)
        return self.enqueue_job(job, **job_options)

    def enqueue_bounded(
        self,
        job: Job,
        max_length: int,
        memory: MemoryBudget | None = None,
        at_front: bool = False,
        unique: bool = False,
    ) -> int:
        """Enqueue the new `job` unless the queue holds `max_length` waiting jobs (0: no limit)
        or Redis's memory is past `memory`'s budget (None: no memory check); with `unique`, as
        RQ's `unique=True` does, unless a job of its id exists (DuplicateJobError).

        Return the queue length right after the enqueue, or raise QueueFullError,
        MemoryFullError or DuplicateJobError. The checks and RQ's own enqueue run in one MULTI
        that never retries, exact under any concurrency. The job must be new (a fresh id, never
        saved), on an asynchronous queue, without dependencies: a refusal takes back exactly
        what RQ's enqueue of such a job writes.
        """
        if job._dependency_ids or not self._is_async:
            raise ValueError("a bounded enqueue takes a new job without dependencies, run async")
        with self.connection.pipeline() as pipe:
            if unique:
                # RQ's own unique enqueue is a Lua script outside any MULTI, which would leave
                # out the index record and the gate: the same check (the job hash exists, or
                # appears before EXEC) is made here under WATCH, inside the one transaction.
                pipe.watch(job.key)  # type: ignore[no-untyped-call]
                if pipe.exists(job.key):
                    raise DuplicateJobError(f"Job with ID '{job.id}' already exists")
                pipe.multi()
            self.enqueue_job(job, pipeline=pipe, at_front=at_front)
            try:
                if not max_length and memory is None:
                    pipe.llen(self.key)
                    return int(pipe.execute()[-1])
                verdict, length = self._gate(pipe, job, max_length, memory, at_front)
            except WatchError:
                raise DuplicateJobError(f"Job with ID '{job.id}' already exists") from None
        if verdict == 1:
            raise QueueFullError(int(length))
        if verdict == 2:
            raise MemoryFullError(int(length))
        return int(length)

    def _gate(
        self,
        pipe: Pipeline,
        job: Job,
        max_length: int,
        memory: MemoryBudget | None,
        at_front: bool,
    ) -> tuple[int, int]:
        """Run the enqueue queued in `pipe` with the gate script; return its verdict and length."""
        gate_keys = [
            self.key,
            job.key,
            keys.transitions_key(),
            keys.status_index_key(Status.QUEUED),
            self.started_job_registry.key,
        ]
        budget = memory or MemoryBudget(percent=0, result_bytes=0)
        args: list[str | int] = [
            job.id,
            max_length,
            int(at_front),
            budget.percent,
            budget.result_bytes,
        ]
        pipe.eval(GATE_LUA, len(gate_keys), *gate_keys, *args)
        verdict, length = pipe.execute()[-1]
        return int(verdict), int(length)

    def _enqueue_async_job(
        self,
        job: Job,
        pipeline: Pipeline | None = None,
        at_front: bool = False,
        unique: bool = False,
    ) -> Job:
        """Enqueue as RQ does; `unique` as RQ's, but through the tracked enqueue (the index
        records the job in the same transaction)."""
        if not unique:
            return super()._enqueue_async_job(job, pipeline=pipeline, at_front=at_front)
        # Like RQ's unique enqueue, this one is its own transaction: `pipeline` is not used.
        self.enqueue_bounded(job, 0, at_front=at_front, unique=True)
        return job

    def empty(self) -> int:
        """Remove every waiting job from RQ and from the index, a bounded batch at a time."""
        script_keys = [self.key, *keys.status_index_keys()]
        removed = 0
        while True:
            count = int(
                self.connection.eval(
                    EMPTY_LUA,
                    len(script_keys),
                    *script_keys,
                    self.job_class.redis_job_namespace_prefix,
                    EMPTY_BATCH,
                )
            )
            removed += count
            if count < EMPTY_BATCH:
                return removed
