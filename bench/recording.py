"""Recording overhead: the service's worker against a plain RQ worker of the same kind."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker

from bench.harness import ROOT, Section, keep_logs, private_redis, table
from shared.settings import Settings
from shared.tasks import RUNNER
from shared.wiring import build_services
from worker.main import build_worker

RETENTION = 7 * 86400
JOBS = {"simple": 3000, "fork": 600}
SMOKE_JOBS = 30


def run(scratch: Path, smoke: bool) -> Section:
    """Time burst workers draining the same number of no-op jobs, service and plain, alternately."""
    rounds = 1 if smoke else 5
    results: dict[str, dict[str, list[float]]] = {}
    with private_redis(scratch / "redis-recording") as server:
        conn = server.client()
        for kind in ("simple", "fork"):
            jobs = SMOKE_JOBS if smoke else JOBS[kind]
            per_kind = results.setdefault(kind, {"service": [], "plain": []})
            for _ in range(rounds):
                for side in ("service", "plain"):
                    conn.flushall()
                    _enqueue(conn, side, jobs)
                    per_kind[side].append(jobs / _drain(server.url, side, kind))
                    assert conn.llen("rq:queue:default") == 0
            print(f"  {kind}: {per_kind}", flush=True)
    return _section(results, smoke)


def _enqueue(conn: redis.Redis, side: str, jobs: int) -> None:
    if side == "service":
        queue = build_services(Settings(retention_seconds=RETENTION), conn).queue
        datas = [
            Queue.prepare_data(RUNNER, args=("echo", {}), result_ttl=RETENTION) for _ in range(jobs)
        ]
    else:
        queue = Queue("default", connection=conn)
        datas = [
            Queue.prepare_data("bench.noop.noop", args=({},), result_ttl=RETENTION)
            for _ in range(jobs)
        ]
    for start in range(0, jobs, 500):
        queue.enqueue_many(datas[start : start + 500])


def _drain(redis_url: str, side: str, kind: str) -> float:
    """Run a burst worker in a fresh process; return the seconds its work loop took."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.recording", "--child", side, kind, redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _child(side: str, kind: str, redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    worker: Any
    if side == "service":
        worker = build_worker(Settings(redis_url=redis_url, worker_class=kind), conn)  # type: ignore[arg-type]
    else:
        worker_class = Worker if kind == "fork" else SimpleWorker
        worker = worker_class([Queue("default", connection=conn)], connection=conn)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
    print(time.perf_counter() - started)


def _section(results: dict[str, dict[str, list[float]]], smoke: bool) -> Section:
    rows = []
    for kind, sides in results.items():
        service, plain = statistics.median(sides["service"]), statistics.median(sides["plain"])
        rows.append(
            [
                "forking `Worker`" if kind == "fork" else "`SimpleWorker`",
                f"{service:,.0f} ({min(sides['service']):,.0f}-{max(sides['service']):,.0f})",
                f"{plain:,.0f} ({min(sides['plain']):,.0f}-{max(sides['plain']):,.0f})",
                f"{service / plain:.1%}",
            ]
        )
    jobs = "30" if smoke else f"{JOBS['simple']:,} (`SimpleWorker`) / {JOBS['fork']:,} (forking)"
    markdown = "\n\n".join(
        [
            f"One burst worker drains {jobs} no-op jobs enqueued beforehand; jobs per second of "
            "its work loop (started in a fresh process, timed inside it), median (min-max) of "
            f"{len(next(iter(results.values()))['service'])} rounds that alternate service and "
            "plain. Service: `python -m worker`'s worker class and job class running the `echo` "
            "task through the task runner, every transition recorded. Plain: RQ's own class "
            "running a plain function (`bench/noop.py`) that returns its argument.",
            table(["worker", "service jobs/s", "plain RQ jobs/s", "service / plain"], rows),
        ]
    )
    return Section("Recording overhead", markdown, [], {k: v for k, v in results.items()})


if __name__ == "__main__":
    keep_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "KIND", "REDIS_URL"))
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
            print(run(Path(tmp), args.smoke).markdown)
