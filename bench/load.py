"""Polling under load: status requests per second and latency while workers are busy."""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rq import Queue

from bench.harness import Section, api_process, fill_index, keep_logs, private_redis, table, wrk
from shared.settings import Settings
from shared.tasks import RUNNER
from shared.wiring import build_services
from tests.helpers import running, service_env, start_worker

HELD = 100_000
POLL = json.dumps({"since_seconds": 5})


def run(scratch: Path, smoke: bool) -> Section:
    """Load the status endpoint with wrk while two workers run a steady stream of jobs."""
    seconds = 2 if smoke else 15
    held = 1_000 if smoke else HELD
    connections = [4] if smoke else [8, 32]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    with private_redis(scratch / "redis-load") as server:
        conn = server.client()
        fill_index(conn, held, 0)
        env = service_env(server.url)
        workers = [start_worker(env, name=f"load-worker-{i}") for i in range(2)]
        with running(*workers), api_process(server.url) as port:
            for clients in connections:
                for busy in (False, True):
                    done_before = _done(conn)
                    stop = threading.Event()
                    feeder = threading.Thread(target=_feed, args=(conn, stop), daemon=True)
                    if busy:
                        feeder.start()
                    result = wrk(
                        port, "/v1/toolkit/jobs/status", POLL, connections=clients, seconds=seconds
                    )
                    stop.set()
                    if busy:
                        feeder.join()
                    ran = _done(conn) - done_before
                    assert result.non_2xx == 0, result
                    label = "2 workers busy" if busy else "workers idle"
                    data[f"{clients}/{label}"] = {**result.__dict__, "jobs_done": ran}
                    rows.append(
                        [
                            clients,
                            label,
                            f"{result.rps:,.0f}",
                            f"{result.p50_ms:.2f}",
                            f"{result.p99_ms:.2f}",
                            f"{ran / seconds:,.0f}",
                        ]
                    )
                    print(f"  {rows[-1]}", flush=True)
    markdown = "\n\n".join(
        [
            f"wrk for {seconds} s per row against gunicorn (2 gevent workers, gunicorn.conf.py) on "
            f"the 2-core machine, `POST /v1/toolkit/jobs/status` with `{POLL}` (a poller "
            f"asking for the last 5 s), {held:,} older jobs held in the index. Busy: two "
            "`python -m worker` processes (forking) run a stream of `echo` jobs fed as fast "
            "as they take them, on the same machine, so pollers, API, workers and Redis share "
            "the two cores.",
            table(
                [
                    "connections",
                    "workers",
                    "requests/s",
                    "p50 (ms)",
                    "p99 (ms)",
                    "jobs done/s meanwhile",
                ],
                rows,
            ),
        ]
    )
    return Section("Polling under load", markdown, [], data)


def _done(conn: Any) -> int:
    return int(conn.zcard("tkj:index:done"))


def _feed(conn: Any, stop: threading.Event) -> None:
    """Keep about 50 echo jobs waiting so both workers always have one to take."""
    queue = build_services(Settings(retention_seconds=86400), conn).queue
    while not stop.is_set():
        if queue.count < 50:
            queue.enqueue_many([Queue.prepare_data(RUNNER, args=("echo", {})) for _ in range(50)])
        else:
            time.sleep(0.01)


if __name__ == "__main__":
    keep_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        print(run(Path(tmp), args.smoke).markdown)
