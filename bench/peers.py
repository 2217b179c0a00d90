"""Compare "which jobs changed recently?" with rq-dashboard and Celery Flower on the same load.

Every tool holds N finished jobs and is asked for the newest K of them:

- this service: `POST /v1/toolkit/jobs/status` with a window that starts in a 2 s gap left
  before the last K jobs ran, through gunicorn, on the jobs its own worker ran;
- rq-dashboard (its own process) on the same Redis and the same jobs: the newest page of K
  of the `finished` registry;
- Celery Flower (its own process, fed by a Celery worker's events through a second private
  Redis): `/api/tasks` filtered by `received_start`, the last K tasks having been sent in a
  fresh minute (smoke mode: `sort_by=-received&limit=K` instead, to skip the minute wait).

Run it alone with `bench/.venv/bin/python -m bench.peers [--smoke]` from the project root.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import secrets
import signal
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
import rq
from rq.registry import FinishedJobRegistry

from bench.celery_app import app as celery_app
from bench.celery_app import noop
from bench.harness import (
    ApiClient,
    Sample,
    Section,
    api_process,
    keep_logs,
    private_redis,
    repeat,
    table,
)
from shared.redis import redis_time_micros
from shared.settings import Settings
from shared.tasks import RUNNER
from shared.wiring import build_services
from tests.helpers import BIN, ROOT, Process, free_port, wait_until
from worker.main import build_worker

HELD, WINDOW = 100_000, 100
SMOKE_HELD, SMOKE_WINDOW = 300, 20
RETENTION = 7 * 86400
QUEUE = "default"
GAP = 2.0
ENQUEUE_BATCH = 1000
USER = "bench"
# One RQ worker spends most of its time waiting on Redis round trips; two side by side hold
# the jobs about twice as fast on two cores.
BURST_WORKERS = 2
# The K-th newest finished job with rq-dashboard's own descending order ("dsc"): its first page
# of size p holds only p - 1 jobs, so a page of K + 1 is what holds the newest K.
DASHBOARD_EXTRA = 1


class HttpGetter:
    """A keep-alive HTTP client sending GETs with HTTP basic auth."""

    def __init__(self, port: int, password: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str) -> tuple[int, bytes]:
        """GET `path`; return the status and the raw answer."""
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def work_burst(redis_url: str) -> None:
    """Run this service's worker in burst mode until the queue is empty (a subprocess entry)."""
    conn = redis.Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, worker_class="simple")
    build_worker(settings, conn).work(burst=True, logging_level="WARNING")


def start_burst_workers(stack: ExitStack, redis_url: str) -> list[Process]:
    """Start BURST_WORKERS processes of `work_burst`, stopped with `stack` if still running."""
    code = "import sys; from bench.peers import work_burst; work_burst(sys.argv[1])"
    procs = []
    for _ in range(BURST_WORKERS):
        proc = Process([sys.executable, "-c", code, redis_url], _env(), name="rq-burst")
        stack.callback(proc.stop)
        procs.append(proc)
    return procs


def finish(procs: list[Process], timeout: float) -> None:
    """Wait for burst workers to exit cleanly within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        status = proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        assert status == 0, f"burst worker exited with {status}:\n{proc.output()[-2000:]}"


def enqueue(queue: rq.Queue, count: int) -> list[str]:
    """Enqueue `count` echo jobs as the API would, in pipelined batches; return their ids."""
    ids: list[str] = []
    for start in range(0, count, ENQUEUE_BATCH):
        datas = [
            rq.Queue.prepare_data(
                RUNNER,
                ("echo", {}),
                timeout=3660,
                result_ttl=RETENTION,
                failure_ttl=RETENTION,
                description="echo task",
                meta={"task": "echo", "progress": 0},
            )
            for _ in range(min(ENQUEUE_BATCH, count - start))
        ]
        with queue.connection.pipeline() as pipe:
            jobs = queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
        ids += [job.id for job in jobs]
    return ids


def send_tasks(broker: str, count: int) -> list[str]:
    """Send `count` no-op Celery tasks over one producer; return their ids."""
    with celery_app.connection_for_write(broker) as conn, conn.Producer() as producer:
        return [noop.apply_async(producer=producer).id for _ in range(count)]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "FLOWER_", "RQ_DASHBOARD_", "REDIS_URL"))
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


def _answers(proc: Process, port: int, path: str, password: str) -> bool:
    _alive(proc)
    client = HttpGetter(port, password)
    try:
        return client.get(path)[0] == 200
    except OSError:
        return False
    finally:
        client.close()


def _alive(*procs: Process) -> None:
    for proc in procs:
        code = proc.popen.poll()
        assert code is None, f"{proc.name} exited with {code}:\n{proc.output()[-2000:]}"


def _flower_sees_worker(port: int, *procs: Process) -> bool:
    _alive(*procs)
    return bool(flower_metrics(port).get("online"))


def flower_metrics(port: int) -> dict[str, float]:
    """Return Flower's event counts by type, plus 'online' workers, from its /metrics."""
    client = HttpGetter(port, "")
    try:
        status, body = client.get("/metrics")
    except OSError:
        return {}
    finally:
        client.close()
    if status != 200:
        return {}
    counts: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("flower_events_total{"):
            kind = line.split('type="', 1)[1].split('"', 1)[0]
            counts[kind] = counts.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("flower_worker_online{"):
            counts["online"] = counts.get("online", 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def wait_flower_succeeded(port: int, count: int, timeout: float, *procs: Process) -> None:
    """Wait until Flower has seen `count` tasks succeed."""

    def seen() -> bool:
        _alive(*procs)
        return flower_metrics(port).get("task-succeeded", 0) >= count

    wait_until(seen, timeout=timeout, interval=0.2)


def timed(call: Callable[[], tuple[int, bytes]], budget: float) -> tuple[Sample, list[bytes]]:
    """Time `call` with harness.repeat; return the sample and every answer (200s only)."""
    answers: list[tuple[int, bytes]] = []
    sample = repeat(lambda: answers.append(call()), budget=budget)
    for status, body in answers:
        assert status == 200, f"HTTP {status}: {body[:500]!r}"
    return sample, [body for _, body in answers]


def check_service(body: bytes, expected: set[str]) -> None:
    """Check the service answered exactly the expected jobs, all done."""
    statuses = json.loads(body)["response"]
    assert set(statuses) == expected, f"{len(statuses)} jobs, {len(expected)} expected"
    assert set(statuses.values()) == {"done"}, set(statuses.values())


def check_dashboard(body: bytes, expected: set[str]) -> None:
    """Check rq-dashboard's page holds exactly the expected jobs."""
    jobs = json.loads(body)["jobs"]
    ids = [job["id"] for job in jobs]
    assert len(ids) == len(expected) and set(ids) == expected, f"{len(ids)} jobs, not the newest"


def check_flower(body: bytes, expected: set[str]) -> None:
    """Check Flower's answer holds exactly the expected tasks, all succeeded."""
    tasks = json.loads(body)
    assert set(tasks) == expected, f"{len(tasks)} tasks, {len(expected)} expected"
    assert {task["state"] for task in tasks.values()} == {"SUCCESS"}


def run(scratch: Path, smoke: bool) -> Section:
    """Hold N jobs in this service, rq-dashboard and Flower; time asking each for the newest K."""
    held, window = (SMOKE_HELD, SMOKE_WINDOW) if smoke else (HELD, WINDOW)
    budget = 0.5 if smoke else 2.0
    hold_timeout = 60.0 if smoke else 900.0
    password = secrets.token_urlsafe(12)
    data: dict[str, Any] = {
        "held": held,
        "window": window,
        "smoke": smoke,
        "versions": {
            name: version(name) for name in ("rq", "rq-dashboard", "celery", "flower", "redis")
        },
    }
    holding: dict[str, float] = {}
    results: dict[str, tuple[Sample, int]] = {}
    fields: dict[str, list[str]] = {"service": ["status (the value under the job id)"]}

    with ExitStack() as stack:
        rq_redis = stack.enter_context(private_redis(scratch / "rq"))
        cel_redis = stack.enter_context(private_redis(scratch / "celery"))
        conn = rq_redis.client()
        stack.callback(conn.close)
        # Should Flower fall behind the worker, Redis's default pub/sub output limit would drop
        # its connection, and events with it; no limit lets it catch up instead.
        admin = cel_redis.client()
        admin.config_set("client-output-buffer-limit", "pubsub 0 0 0")
        admin.close()
        broker = f"redis+socket://{cel_redis.socket}"

        # Celery's worker and Flower start first, so their start-up overlaps RQ's holding.
        celery = [str(BIN / "celery"), "-A", "bench.celery_app", "-b", broker]
        cworker = Process(
            [
                *celery,
                "worker",
                "-E",
                "--pool=solo",
                "-n",
                "bench@%h",
                "-l",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
            ],
            _env(),
            name="celery-worker",
        )
        stack.callback(cworker.stop, 10)
        flower_port = free_port()
        flower = Process(
            [
                *celery,
                "flower",
                f"--port={flower_port}",
                "--address=127.0.0.1",
                f"--max_tasks={held + window}",
                f"--basic_auth={USER}:{password}",
                "--logging=warning",
            ],
            _env(),
            name="flower",
        )
        # Flower has been seen to ignore SIGTERM once its broker is gone: do not wait long.
        stack.callback(flower.stop, 5)

        # 1. This service's jobs: the first N-K run by its own worker, in the background.
        queue = build_services(Settings(queue_name=QUEUE, retention_seconds=RETENTION), conn).queue
        started = time.perf_counter()
        enqueue(queue, held - window)
        burst = start_burst_workers(stack, rq_redis.url)

        # 3. Meanwhile, N-K Celery tasks, once Flower listens and sees the worker.
        wait_until(lambda: _flower_sees_worker(flower_port, cworker, flower), timeout=60)
        cel_started = time.perf_counter()
        send_tasks(broker, held - window)

        finish(burst, hold_timeout)
        holding["rq_first"] = time.perf_counter() - started
        wait_flower_succeeded(flower_port, held - window, hold_timeout, cworker, flower)
        holding["celery_first"] = time.perf_counter() - cel_started
        # Every earlier task was received before now, so the next minute is all the last K's.
        fresh_minute = (math.floor(time.time() / 60) + 1) * 60

        # The deliberate gap, its middle (by Redis's clock) being where the window starts.
        time.sleep(GAP / 2)
        gap_us = redis_time_micros(conn)
        time.sleep(GAP / 2)
        started = time.perf_counter()
        newest = set(enqueue(queue, window))
        finish(start_burst_workers(stack, rq_redis.url), hold_timeout)
        holding["rq_last"] = time.perf_counter() - started
        finished = FinishedJobRegistry(QUEUE, connection=conn).count
        assert finished == held, f"{finished} finished jobs, {held} expected"

        # 1. This service, through gunicorn.
        with api_process(rq_redis.url) as port:
            client = ApiClient(port)
            anchor_us, anchor = redis_time_micros(conn), time.perf_counter()

            def ask_service() -> tuple[int, bytes]:
                now_us = anchor_us + (time.perf_counter() - anchor) * 1e6
                since = (now_us - gap_us) / 1e6
                return client.post("/v1/toolkit/jobs/status", {"since_seconds": since})

            try:
                sample, answers = timed(ask_service, budget)
            finally:
                client.close()
        for body in answers:
            check_service(body, newest)
        results["service"] = (sample, len(answers[-1]))

        # 2. rq-dashboard on the same Redis and jobs.
        dash_port = free_port()
        dashboard = Process(
            [
                str(BIN / "rq-dashboard"),
                "--redis-url",
                rq_redis.url,
                "--port",
                str(dash_port),
                "--bind",
                "127.0.0.1",
                "--username",
                USER,
                "--password",
                password,
            ],
            _env(),
            name="rq-dashboard",
        )
        stack.callback(dashboard.stop, 5)
        page = f"/0/data/jobs/{QUEUE}/finished/{window + DASHBOARD_EXTRA}/dsc/1.json"
        wait_until(lambda: _answers(dashboard, dash_port, page, password), timeout=30)
        getter = HttpGetter(dash_port, password)
        connections = conn.info("stats")["total_connections_received"]
        try:
            sample, answers = timed(lambda: getter.get(page), budget)
            connections = conn.info("stats")["total_connections_received"] - connections
            data["dashboard_redis_connections_per_request"] = connections / len(answers)
            # What the route documented in the brief (and its look-alike) would have answered.
            desc = getter.get(f"/0/data/jobs/{QUEUE}/finished/{window}/desc/1.json")[1]
            data["dashboard_desc_page_newest"] = len(_ids(desc) & newest)
            data["dashboard_dsc_page_of_k_holds"] = len(
                _ids(getter.get(f"/0/data/jobs/{QUEUE}/finished/{window}/dsc/1.json")[1])
            )
        finally:
            getter.close()
        dashboard.stop(5)
        for body in answers:
            check_dashboard(body, newest)
        results["dashboard"] = (sample, len(answers[-1]))
        fields["dashboard"] = sorted(json.loads(answers[-1])["jobs"][0])

        # 3. Flower: the last K tasks, in a fresh minute unless this is a smoke run.
        if not smoke:
            time.sleep(max(0.0, fresh_minute - time.time()) + 0.05)
        started = time.perf_counter()
        latest = set(send_tasks(broker, window))
        wait_flower_succeeded(flower_port, held, hold_timeout, cworker, flower)
        holding["celery_last"] = time.perf_counter() - started
        minute = time.strftime("%Y-%m-%d %H:%M", time.localtime(fresh_minute))
        queries = {"flower_newest": {"sort_by": "-received", "limit": str(window)}}
        if not smoke:
            queries = {"flower_received_start": {"received_start": minute}, **queries}
        getter = HttpGetter(flower_port, password)
        try:
            for key, query in queries.items():
                path = "/api/tasks?" + urllib.parse.urlencode(query)
                sample, answers = timed(lambda path=path: getter.get(path), budget)
                for body in answers:
                    check_flower(body, latest)
                results[key] = (sample, len(answers[-1]))
                fields["flower"] = sorted(next(iter(json.loads(answers[-1]).values())))
                data[f"{key}_request"] = f"GET {path}"
        finally:
            getter.close()

    data["holding_seconds"] = holding
    data["fields_per_job"] = fields
    data["response_bytes"] = {key: size for key, (_, size) in results.items()}
    data["seconds"] = {key: sample.times for key, (sample, _) in results.items()}
    return Section(
        title="Peers: which jobs changed recently?",
        markdown=_markdown(held, window, results, data, minute, smoke),
        figures=[],
        data=data,
    )


def _ids(body: bytes) -> set[str]:
    return {job["id"] for job in json.loads(body)["jobs"]}


def _markdown(
    held: int,
    window: int,
    results: dict[str, tuple[Sample, int]],
    data: dict[str, Any],
    minute: str,
    smoke: bool,
) -> str:
    base = results["service"][0].median
    page = f"/0/data/jobs/{QUEUE}/finished/{window + DASHBOARD_EXTRA}/dsc/1.json"
    requests = {
        "service": ("this service", "`POST /v1/toolkit/jobs/status {since_seconds}`"),
        "dashboard": (f"rq-dashboard {data['versions']['rq-dashboard']}", f"`GET {page}`"),
        "flower_received_start": (
            f"Flower {data['versions']['flower']}",
            f"`GET /api/tasks?received_start={minute}`",
        ),
        "flower_newest": (
            f"Flower {data['versions']['flower']}",
            f"`GET /api/tasks?sort_by=-received&limit={window}`",
        ),
    }
    rows = []
    for key, (sample, size) in results.items():
        tool, request = requests[key]
        ratio = "1" if key == "service" else f"{sample.median / base:.3g}x"
        rows.append([tool, request, sample.ms(), f"{size:,}", ratio])
    header = ["tool", "request", "median (min-max)", "bytes", "peer / this service"]
    fields = data["fields_per_job"]
    if smoke:
        flower_how = (
            f"Smoke mode skips the minute wait: only `sort_by=-received&limit={window}` is timed."
        )
    else:
        flower_how = (
            f"The last {window} tasks were sent after a minute boundary, so `received_start` "
            "(minute resolution) selects exactly them; the `sort_by=-received` row asks for "
            f"the newest {window} instead, as Flower's own task list does."
        )
    notes = [
        f"{held:,} jobs held by each tool, the newest {window} asked for; every answer was "
        "checked to hold exactly those jobs. Each tool runs as its own process on 127.0.0.1, "
        "timed over one keep-alive connection where the server keeps it (gunicorn's sync "
        "workers close each one). rq-dashboard and Flower check HTTP basic auth, this "
        "service its API key.",
        "",
        "- **This service** answers `{job_id: status}` inside its response envelope: one "
        "status string per job, read by range from its status index (a sorted set per status, "
        f"scored by Redis time). The window starts in a {GAP:g} s pause left before the last "
        f"{window} jobs ran.",
        f"- **rq-dashboard** answers, per job, `{', '.join(fields['dashboard'])}`, plus "
        "pagination links. It reads one job hash and one result stream per job, and connects "
        "to Redis afresh on every request (Redis counted "
        f"{data['dashboard_redis_connections_per_request']:.3g} new connections per request). "
        "Its descending order is spelled `dsc`: `.../desc/...` sorts ascending (its "
        f"page held {data['dashboard_desc_page_newest']} of the newest {window}), and a `dsc` "
        f"page of {window} holds {data['dashboard_dsc_page_of_k_holds']} jobs, so the timed "
        f"page asks for {window + DASHBOARD_EXTRA} to get the newest {window}. Its order is "
        "RQ's finished registry's, scored in whole seconds of the worker's clock: jobs that "
        "finished within the same second come in job-id order.",
        f"- **Flower** answers, per task, `{', '.join(fields['flower'])}`. It filters and "
        "sorts its in-memory task state in Python, over every task it holds. It is fed by a "
        "`--pool=solo` Celery worker sending events (`-E`), through a Redis of its own. "
        + flower_how,
        f"- Holding the jobs is not a reported figure ({BURST_WORKERS} burst workers of this "
        "service ran RQ's jobs while Celery ran its first batch): "
        + ", ".join(f"{key} {secs:.1f} s" for key, secs in data["holding_seconds"].items())
        + ".",
    ]
    return table(header, rows) + "\n\n" + "\n".join(notes) + "\n"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Run the comparison in a scratch folder under /tmp and print its markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred jobs, in seconds")
    args = parser.parse_args()
    # A plain SIGTERM would skip the clean-up that stops every process this run starts.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as scratch:
        section = run(Path(scratch), args.smoke)
    print(section.markdown)


if __name__ == "__main__":
    keep_logs()
    main()
