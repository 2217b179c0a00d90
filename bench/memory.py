"""Memory: bytes of Redis memory per indexed job."""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rq.job import JobStatus

from bench.harness import Section, fill_index, keep_logs, private_redis, table
from shared import keys
from shared.index import record
from shared.status import Status

FULL_JOBS = 100_000
SMOKE_JOBS = 1_000


def run(scratch: Path, smoke: bool) -> Section:
    """Measure the index's memory per job, filled directly and through the record script."""
    jobs = SMOKE_JOBS if smoke else FULL_JOBS
    with private_redis(scratch / "redis-memory") as server:
        conn = server.client()

        conn.flushall()
        before = int(conn.info("memory")["used_memory"])
        fill_index(conn, jobs, 0)
        after = int(conn.info("memory")["used_memory"])
        direct_info = (after - before) / jobs
        direct_usage = _usage(conn) / jobs
        # A set that just outgrew its hash table keeps both tables until enough later
        # operations (each moves a bucket) finish the incremental rehash; a live index gets
        # those from its own traffic. Lookups of a missing member stand in for that traffic.
        _finish_rehash(conn, jobs)
        settled = int(conn.info("memory")["used_memory"])
        settled_info = (settled - before) / jobs
        settled_usage = _usage(conn) / jobs

        conn.flushall()
        with conn.pipeline(transaction=False) as pipe:
            for i in range(jobs):
                record(pipe, str(uuid.uuid4()), JobStatus.FINISHED)
                if i % 1000 == 999:
                    pipe.execute()
            pipe.execute()
        recorded_usage = _usage(conn) / jobs
        encoding = conn.object("encoding", keys.status_index_key(Status.DONE))

    rows = [
        ["filled with ZADD (5 statuses), at once", f"{direct_info:.0f}", f"{direct_usage:.0f}"],
        ["the same, after the incremental rehash", f"{settled_info:.0f}", f"{settled_usage:.0f}"],
        ["recorded through the record script (all `done`)", "-", f"{recorded_usage:.0f}"],
    ]
    markdown = "\n\n".join(
        [
            f"{jobs:,} jobs with RQ's 36-character uuid4 ids; sorted-set encoding "
            f"`{encoding.decode() if isinstance(encoding, bytes) else encoding}`. `INFO memory`: "
            "`used_memory` before and after, divided by the job count. `MEMORY USAGE`: the sum "
            "over the five index sets (`SAMPLES 0`, exact), divided by the job count. The record "
            "script also writes the `status` field of RQ's own job hash; that hash belongs to RQ "
            "and is not counted here.",
            table(["how", "INFO used_memory (B/job)", "MEMORY USAGE (B/job)"], rows),
        ]
    )
    return Section(
        "Memory per indexed job",
        markdown,
        [],
        {
            "info": direct_info,
            "usage": direct_usage,
            "settled_info": settled_info,
            "settled_usage": settled_usage,
            "recorded": recorded_usage,
        },
    )


def _finish_rehash(conn: Any, jobs: int) -> None:
    with conn.pipeline(transaction=False) as pipe:
        for i in range(jobs):
            for key in keys.status_index_keys():
                pipe.zscore(key, "no-such-job")
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()


def _usage(conn: Any) -> int:
    total = 0
    for key in keys.status_index_keys():
        usage = conn.memory_usage(key, samples=0)
        total += int(usage or 0)
    return total


if __name__ == "__main__":
    keep_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        print(run(Path(tmp), args.smoke).markdown)
