"""Drift repair: one full repair pass over 10^6 jobs, its Redis time and its longest command."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry
from rq.utils import utcformat

from bench.harness import Section, keep_logs, private_redis, table
from shared import keys
from shared.index import STATUSES, TRIM_LUA, StatusIndex
from shared.redis import redis_time_micros
from shared.settings import Settings
from shared.status import FROM_RQ, Status
from worker.repair import REPAIR_BATCH, REPAIR_DUTY, REPAIR_LUA, PassReport, repair_pass

FULL_JOBS = 1_000_000
SMOKE_JOBS = 2_000
FULL_BATCHES = [50, 100, 200, 500, 1000]
SMOKE_BATCHES = [50, 200]
# Every 100th job of each kind: 1% moved (another status in RQ), 1% removed (job hash gone),
# 1% added (in RQ's registry, not in the index).
MOVED, REMOVED, ADDED = 0, 1, 2
# Ids per fill script call, and per pipeline of the naive read's HGETs.
FILL_BATCH = 5_000
NAIVE_BATCH = 10_000
# The pass runs on a connection of its own, named, so that SLOWLOG tells its commands apart.
CLIENT_NAME = "repair-bench"
LONG_COMMAND_MS = 2.0
# SLOWLOG logs the commands over SLOW_US: every script call of the pass and the naive read's
# ZRANGEs, not the millions of HGETs (of the naive read, or inside the scripts) of a few µs.
SLOW_US = 10
SLOWLOG_LEN = 200_000
# The commands a pass sends itself, and the naive read's (INFO commandstats names). The three
# HINCRBY that close a pass with changes are left out: scripts call HINCRBY too.
PASS_COMMANDS = ("evalsha", "script|load", "smembers", "multi", "exec")
NAIVE_COMMANDS = ("zrange", "hget")
# The scripts a pass calls, by the SHA1 that EVALSHA names them with.
SCRIPTS = {
    hashlib.sha1(lua.encode()).hexdigest().encode(): name
    for name, lua in (("repair", REPAIR_LUA), ("trim", TRIM_LUA))
}

# Write each id of ARGV[5 + 2n..] as one finished job: its job hash (prefix ARGV[1]) of the n
# field/value pairs ARGV[5..4 + 2n], its entry in RQ's finished registry KEYS[1] scored
# ARGV[2] (the expiry) and in the index set KEYS[2] scored ARGV[3] (Redis time, µs).
# One script call per few thousand jobs: 10^6 of them in 20-30 s on the benchmark machine.
FILL_LUA = """
local prefix, expiry, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local fields = {}
for i = 5, 4 + 2 * n do fields[#fields + 1] = ARGV[i] end
for i = 5 + 2 * n, #ARGV do
  local id = ARGV[i]
  redis.call('HSET', prefix .. id, unpack(fields))
  redis.call('ZADD', KEYS[1], expiry, id)
  redis.call('ZADD', KEYS[2], now, id)
end
return #ARGV - 4 - 2 * n
"""

T = TypeVar("T")


@dataclass(frozen=True)
class Cost:
    """What one measured run cost: wall time, and the Redis time of its own commands."""

    wall_s: float
    redis_s: float
    commands: int
    longest_ms: float
    longest_command: str
    script_calls: int
    script_p50_ms: float
    script_p99_ms: float
    # Repair script calls over LONG_COMMAND_MS.
    script_calls_long: int

    @property
    def share(self) -> float:
        """Return the Redis time as a share of the wall time."""
        return self.redis_s / self.wall_s


def run(scratch: Path, smoke: bool) -> Section:
    """Build a drifted 10^6-job Redis, repair it, and measure the pass against its baselines."""
    jobs = SMOKE_JOBS if smoke else FULL_JOBS
    batches = SMOKE_BATCHES if smoke else FULL_BATCHES
    settings = Settings()
    with private_redis(scratch / "redis-repair") as server:
        admin = server.client()
        conn = server.client(client_name=CLIENT_NAME)
        conn.ping()
        index = StatusIndex(conn, settings.retention_seconds)
        started = time.perf_counter()
        ids = _fill(admin, jobs, settings.retention_seconds)
        expected = _drift(admin, ids)
        print(f"  filled {jobs:,} jobs in {time.perf_counter() - started:.1f} s", flush=True)

        drift_report, drift = _measured_pass(admin, index, REPAIR_BATCH)
        assert drift_report.counts == expected, (drift_report.counts, expected)
        _print("drift pass", drift, drift_report)
        clean_report, clean = _measured_pass(admin, index, REPAIR_BATCH)
        assert clean_report.changed == 0, clean_report.counts
        _print("clean pass", clean, clean_report)
        _check_repaired(admin, jobs, expected)
        wrong, naive = _measure(admin, lambda: _naive_read(conn), NAIVE_COMMANDS)
        assert wrong == 0, wrong
        _print("naive read", naive, None)

        sweep: dict[int, tuple[PassReport, Cost]] = {}
        for batch in batches:
            sweep[batch] = _measured_pass(admin, index, batch, duty=1.0)
            assert sweep[batch][0].changed == 0
            _print(f"clean pass, batch {batch}", sweep[batch][1], sweep[batch][0])
    return _section(
        jobs,
        settings.repair_interval,
        (drift_report, drift),
        (clean_report, clean),
        naive,
        sweep,
    )


def _template(conn: redis.Redis, now: dt.datetime) -> dict[bytes, bytes]:
    """Return the fields of a finished job's hash as RQ writes them (a no-op job's)."""
    job = Queue("default", connection=conn).enqueue("bench.noop.noop", {"n": 1})
    fields = {_raw(k): _raw(v) for k, v in conn.hgetall(job.key).items()}
    conn.delete(job.key, keys.rq_queue_key("default"))
    stamp = utcformat(now).encode()
    for name in (b"created_at", b"enqueued_at", b"started_at", b"ended_at", b"last_heartbeat"):
        fields[name] = stamp
    fields[b"status"] = JobStatus.FINISHED.value.encode()
    fields[b"worker_name"] = uuid.uuid4().hex.encode()
    return fields


def _raw(value: bytes | str) -> bytes:
    """Return a reply item as bytes, whatever the client decoded."""
    return value if isinstance(value, bytes) else value.encode()


def _fill(conn: redis.Redis, jobs: int, retention: int) -> list[str]:
    """Write `jobs` finished jobs: job hash, RQ's finished registry, the index; return the ids."""
    conn.flushall()
    now = dt.datetime.now(dt.UTC)
    fields = _template(conn, now)
    flat = [item for pair in fields.items() for item in pair]
    fill = conn.register_script(FILL_LUA)
    registry = FinishedJobRegistry("default", connection=conn).key
    expiry = int(now.timestamp()) + retention
    score = redis_time_micros(conn)
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    for start in range(0, jobs, FILL_BATCH):
        chunk = ids[start : start + FILL_BATCH]
        fill(
            keys=[registry, keys.status_index_key(Status.DONE)],
            args=[Job.redis_job_namespace_prefix, expiry, score, len(fields), *flat, *chunk],
        )
    conn.sadd(Queue.redis_queues_keys, keys.rq_queue_key("default"))
    StatusIndex(conn, retention).mark()
    return ids


def _drift(conn: redis.Redis, ids: list[str]) -> dict[str, int]:
    """Seed 1% of each kind of drift behind the index's back; return the expected counts."""
    expected = {"removed": 0, "moved": 0, "added": 0}
    done = keys.status_index_key(Status.DONE)
    with conn.pipeline(transaction=False) as pipe:
        for i, job_id in enumerate(ids):
            kind = i % 100
            if kind == MOVED:
                pipe.hset(keys.rq_job_key(job_id), "status", JobStatus.FAILED.value)
                expected["moved"] += 1
            elif kind == REMOVED:
                # RQ's registry keeps the entry until its own cleanup: the pass meets it twice.
                pipe.delete(keys.rq_job_key(job_id))
                expected["removed"] += 1
            elif kind == ADDED:
                pipe.zrem(done, job_id)
                expected["added"] += 1
            if len(pipe) >= FILL_BATCH:
                pipe.execute()
        pipe.execute()
    return expected


def _check_repaired(conn: redis.Redis, jobs: int, expected: dict[str, int]) -> None:
    """Assert that the index now holds exactly what RQ says."""
    sizes = {status: conn.zcard(keys.status_index_key(status)) for status in STATUSES}
    assert sizes[Status.FAILED] == expected["moved"], sizes
    assert sizes[Status.DONE] == jobs - expected["moved"] - expected["removed"], sizes
    assert sizes[Status.QUEUED] == sizes[Status.RUNNING] == sizes[Status.CANCELED] == 0, sizes


def _naive_read(conn: redis.Redis) -> int:
    """Read every indexed id in one round trip, then HGET each status; return the mismatches."""
    with conn.pipeline(transaction=False) as pipe:
        for key in keys.status_index_keys():
            pipe.zrange(key, 0, -1)
        ranges = pipe.execute()
    wrong = 0
    prefix = Job.redis_job_namespace_prefix.encode()
    for status, members in zip(STATUSES, ranges, strict=True):
        for start in range(0, len(members), NAIVE_BATCH):
            chunk = members[start : start + NAIVE_BATCH]
            with conn.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hget(prefix + job_id, "status")
                replies = pipe.execute()
            wrong += sum(
                1 for raw in replies if raw is None or FROM_RQ[JobStatus(raw.decode())] != status
            )
    return wrong


def _measured_pass(
    admin: redis.Redis, index: StatusIndex, batch: int, duty: float = REPAIR_DUTY
) -> tuple[PassReport, Cost]:
    """Run one repair pass of `batch` ids per call at `duty`; return its report and its cost."""
    return _measure(
        admin,
        lambda: repair_pass(index, batch=batch, duty=duty),
        PASS_COMMANDS,
        script_calls=lambda report: report.calls,
    )


def _measure(
    admin: redis.Redis,
    fn: Callable[[], T],
    commands: tuple[str, ...],
    script_calls: Callable[[T], int] = lambda _: 0,
) -> tuple[T, Cost]:
    """Run `fn`; return its value and its cost, the Redis time of its own `commands`.

    INFO commandstats gives each command's calls and time; the commands a script calls count
    there too, inside the script's own time, so only the names the client sends are summed.
    SLOWLOG gives single durations: it logs every command over SLOW_US (a script's inner calls
    included, hence the threshold and the filter on the client's name). `script_calls(value)`
    says how many repair script calls ran; those under the threshold count as 0 in percentiles.
    """
    saved = admin.config_get("slowlog-*")
    admin.config_set("slowlog-max-len", SLOWLOG_LEN)
    admin.config_set("slowlog-log-slower-than", SLOW_US)
    admin.slowlog_reset()
    before = admin.info("commandstats")
    try:
        started = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - started
        after = admin.info("commandstats")
        logged = admin.slowlog_len()
        entries = admin.slowlog_get(SLOWLOG_LEN)
    finally:
        admin.config_set("slowlog-log-slower-than", str(saved["slowlog-log-slower-than"]))
        admin.config_set("slowlog-max-len", str(saved["slowlog-max-len"]))
        admin.slowlog_reset()
    # A full log would have dropped the oldest entries: the figures below need all of them.
    assert logged < SLOWLOG_LEN, logged
    own = [e for e in entries if e["client_name"] == CLIENT_NAME.encode()]
    longest = max(own, key=lambda e: int(e["duration"]))
    scripts = [int(e["duration"]) for e in own if _name(e["command"]) == "EVALSHA repair"]
    calls = script_calls(value)
    # The first call on a fresh server is refused (NOSCRIPT, at once) and sent again after
    # SCRIPT LOAD: one logged call more than the pass counts, the shortest.
    assert len(scripts) <= calls + 1, (len(scripts), calls)
    scripts = sorted([0] * (calls - len(scripts)) + scripts)[-calls:] if calls else []

    def delta(field: str) -> int:
        return sum(
            int(after.get(f"cmdstat_{name}", {}).get(field, 0))
            - int(before.get(f"cmdstat_{name}", {}).get(field, 0))
            for name in commands
        )

    return value, Cost(
        wall_s=wall,
        redis_s=delta("usec") / 1e6,
        commands=delta("calls"),
        longest_ms=int(longest["duration"]) / 1e3,
        longest_command=_name(longest["command"], source=True),
        script_calls=calls,
        script_p50_ms=statistics.median(scripts) / 1e3 if scripts else 0.0,
        script_p99_ms=_percentile(scripts, 0.99) / 1e3 if scripts else 0.0,
        script_calls_long=sum(1 for us in scripts if us > LONG_COMMAND_MS * 1e3),
    )


def _name(command: bytes, source: bool = False) -> str:
    """Return a logged command's name and first key; a script's by name ("EVALSHA repair").

    With `source`, a repair call also names the key it read ("EVALSHA repair rq:finished:...").
    """
    words = command.split()
    if words[0].upper() == b"EVALSHA" and len(words) > 1 and words[1] in SCRIPTS:
        name = f"EVALSHA {SCRIPTS[words[1]]}"
        # EVALSHA sha numkeys, then the keys: the index sets, the transitions and repairs
        # hashes, the source.
        at = 3 + len(STATUSES) + 2
        if source and name == "EVALSHA repair" and len(words) > at:
            name += " " + words[at].decode(errors="replace")
        return name
    return b" ".join(words[:2]).decode(errors="replace")


def _percentile(ordered: list[int], share: float) -> float:
    """Return the nearest-rank percentile of an ascending list."""
    return float(ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))])


def _print(label: str, cost: Cost, report: PassReport | None) -> None:
    changes = f", {report.counts}, {report.calls} calls" if report else ""
    print(
        f"  {label}: {cost.wall_s:.2f} s wall, {cost.redis_s:.2f} s Redis ({cost.share:.0%}), "
        f"longest {cost.longest_ms:.2f} ms ({cost.longest_command}), script p99 "
        f"{cost.script_p99_ms:.2f} ms, {cost.script_calls_long} over {LONG_COMMAND_MS} ms"
        f"{changes}",
        flush=True,
    )


def _section(
    jobs: int,
    interval: int,
    drift: tuple[PassReport, Cost],
    clean: tuple[PassReport, Cost],
    naive: Cost,
    sweep: dict[int, tuple[PassReport, Cost]],
) -> Section:
    def row(label: str, cost: Cost, changes: str) -> list[Any]:
        scripts = (
            f"{cost.script_calls:,}: {cost.script_p50_ms:.2f} / {cost.script_p99_ms:.2f}, "
            f"{cost.script_calls_long:,}"
            if cost.script_calls
            else "-"
        )
        return [
            label,
            f"{cost.wall_s:.2f}",
            f"{cost.commands:,}",
            f"{cost.redis_s:.2f}",
            f"{cost.share:.0%}",
            f"{cost.longest_ms:.2f} (`{cost.longest_command}`)",
            scripts,
            changes,
        ]

    drift_report, drift_cost = drift
    clean_report, clean_cost = clean
    counts = drift_report.counts
    rows = [
        row(
            f"repair pass over the drift (batch {REPAIR_BATCH})",
            drift_cost,
            f"{counts['moved']:,} moved, {counts['removed']:,} removed, {counts['added']:,} added",
        ),
        row(f"repair pass, clean (batch {REPAIR_BATCH})", clean_cost, "0"),
        row("naive full read: ZRANGE 0 -1 x 5, HGET status per id", naive, "- (reads only)"),
    ]
    sweep_rows = [
        [
            f"**{batch}**" if batch == REPAIR_BATCH else str(batch),
            f"{report.calls:,}",
            f"{cost.wall_s:.2f}",
            f"{cost.redis_s:.2f}",
            f"{cost.share:.0%}",
            f"{cost.script_p50_ms:.2f} / {cost.script_p99_ms:.2f}",
            f"{cost.script_calls_long:,}",
            f"{cost.longest_ms:.2f}",
        ]
        for batch, (report, cost) in sweep.items()
    ]
    worst = max(drift_cost.wall_s, clean_cost.wall_s)
    bound = interval + worst
    header = [
        "what",
        "wall (s)",
        "commands",
        "Redis time (s)",
        "Redis / wall",
        "longest command (ms)",
        f"repair calls: p50 / p99 (ms), over {LONG_COMMAND_MS:.0f} ms",
        "changes",
    ]
    markdown = "\n\n".join(
        [
            f"One full `repair_pass` (`worker/repair.py`, {REPAIR_BATCH} ids per script call, "
            f"paced to keep Redis busy at most {REPAIR_DUTY:.0%} of the pass's time) "
            f"over a private Redis holding {jobs:,} finished jobs as RQ leaves them: the job "
            "hash (RQ's own fields of a real job, status `finished`, RQ's timestamps), an entry "
            "in `rq:finished:default` and one in `tkj:index:done`. Drift seeded beforehand, "
            "behind the index's back: 1% of the jobs with status `failed` in RQ, 1% with the job "
            "hash deleted (left in RQ's registry, as until RQ's cleanup), 1% missing from the "
            "index. Then the same pass again (clean: nothing left to change), and, as the "
            "baseline, the naive full read of the repaired data: `ZRANGE 0 -1` of the five index "
            f"sets in one round trip, then `HGET status` per id, {NAIVE_BATCH:,} per pipeline "
            "(it reads only the index side and repairs nothing). Redis time: the time INFO "
            "commandstats adds up for the commands the run sends (a script's inner calls "
            "count once, inside the script's time); longest: the longest single command, from "
            f"SLOWLOG (threshold {SLOW_US} µs); repair calls: the repair script's calls, p50 / "
            "p99 (those under the threshold count as 0); Redis / wall: how busy the run keeps "
            "Redis while it lasts.",
            table(header, rows),
            "The clean pass at other batch sizes, unpaced (`repair_pass(index, batch=N, "
            "duty=1.0)`), same data:",
            table(
                [
                    "ids per call",
                    "script calls",
                    "wall (s)",
                    "Redis time (s)",
                    "Redis / wall",
                    "script p50 / p99 (ms)",
                    f"calls over {LONG_COMMAND_MS:.0f} ms",
                    "longest (ms)",
                ],
                sweep_rows,
            ),
            f"At {jobs:,} jobs a pass takes **{drift_cost.wall_s:.2f} s** over the drift and "
            f"**{clean_cost.wall_s:.2f} s** clean: at the default REPAIR_INTERVAL of {interval} s, "
            f"any drift is repaired within {interval} + {worst:.2f} = **{bound:.2f} s** "
            f"({'under' if bound < 60 else '**over**'} 60 s). A repair call takes "
            f"{drift_cost.script_p50_ms:.2f} ms at the median and "
            f"**{drift_cost.script_p99_ms:.2f} ms** at p99 "
            f"({drift_cost.script_calls_long:,} of {drift_cost.script_calls:,} calls over "
            f"{LONG_COMMAND_MS:.0f} ms, the longest {drift_cost.longest_ms:.2f} ms), against "
            f"**{naive.longest_ms:.1f} ms** for the naive read's single `{naive.longest_command}`. "
            f"Redis works {drift_cost.share:.0%} of the pass's wall time: "
            f"**{drift_cost.redis_s:.1f} s** of Redis time per pass, "
            f"{drift_cost.redis_s / interval:.0%} of each {interval} s interval.",
        ]
    )
    data: dict[str, Any] = {
        "jobs": jobs,
        "batch": REPAIR_BATCH,
        "repair_interval_s": interval,
        "bound_s": bound,
        "bound_met": bound < 60,
        "drift": {"counts": drift_report.counts, "calls": drift_report.calls, **asdict(drift_cost)},
        "clean": {"counts": clean_report.counts, "calls": clean_report.calls, **asdict(clean_cost)},
        "naive": asdict(naive),
        "batches": {
            str(batch): {"calls": report.calls, **asdict(cost)}
            for batch, (report, cost) in sweep.items()
        },
    }
    return Section("Drift repair", markdown, [], data)


if __name__ == "__main__":
    keep_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-repair-") as tmp:
        section = run(Path(tmp), args.smoke)
    print(section.markdown)
    print(f"({time.perf_counter() - began:.0f} s)")
