"""A one-minute soak: 100 pollers and 20 submitters against gunicorn and two busy workers."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from shared import keys
from shared.status import Status
from tests.helpers import (
    AUTH,
    HOST,
    TIMEOUT,
    free_port,
    job_workers,
    running,
    start_api,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e

SOAK_SECONDS = 60.0
LIMIT = 40
POLLERS = 100
SUBMITTERS = 20
# A short pause between a client's requests, so 120 threads cannot starve the 2-core machine.
PAUSE = 0.02
SAMPLE_INTERVAL = 0.005
# Each loop also stops by count: far more iterations than the soak leaves time for.
MAX_REQUESTS = int(SOAK_SECONDS / PAUSE) * 2
MAX_SAMPLES = int(SOAK_SECONDS / SAMPLE_INTERVAL) * 2
KEPT_ERRORS = 20
STATUSES = {status.value for status in Status}
SLEEP_JOB = json.dumps({"task": "sleep", "payload": {"seconds": 0.05}}).encode()
POLL = json.dumps({"since_seconds": 10}).encode()
HEADERS = {**AUTH, "Content-Type": "application/json", "Accept": "application/json"}
TRANSITION = re.compile(r"job (\S+) \(sleep\) \S+ -> (running|done)\b", re.MULTILINE)


@dataclass
class Tally:
    """What one client thread saw: answers by status, accepted job ids, unexpected events."""

    statuses: Counter[int] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def error(self, what: str) -> None:
        """Count one unexpected event, keeping the first few for the failure message."""
        self.error_count += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append(what)


def exchange(
    conn: http.client.HTTPConnection, path: str, body: bytes
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST `body` on `conn`; return the status, lower-cased headers and JSON object answered."""
    conn.request("POST", path, body=body, headers=HEADERS)
    resp = conn.getresponse()
    raw = resp.read()
    headers = {name.lower(): value for name, value in resp.getheaders()}
    decoded = json.loads(raw)
    if not isinstance(decoded, dict):
        raise ValueError(f"{resp.status}: not a JSON object: {raw[:200]!r}")
    return resp.status, headers, decoded


def poller(port: int, end: float) -> Tally:
    """Poll the status window on one connection until `end`; every answer must be a 200."""
    tally = Tally()
    # One keep-alive connection per client (gunicorn.conf.py: gevent, keepalive HEADER_TIMEOUT,
    # 10 s); after an error it is closed, and http.client opens a fresh one for the next request.
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        for _ in range(MAX_REQUESTS):
            if time.monotonic() >= end:
                break
            try:
                status, _, body = exchange(conn, "/v1/toolkit/jobs/status", POLL)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                tally.error(f"poll: {exc!r}")
                conn.close()
            else:
                tally.statuses[status] += 1
                if status != 200:
                    tally.error(f"poll: {status} {body}")
                elif not (
                    isinstance(listed := body.get("response"), dict)
                    and set(listed.values()) <= STATUSES
                ):
                    tally.error(f"poll: malformed body {body}")
            time.sleep(PAUSE)
    finally:
        conn.close()
    return tally


def submitter(port: int, end: float) -> Tally:
    """Submit sleep jobs on one connection until `end`; each answer must be a 202 or a 429."""
    tally = Tally()
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        for _ in range(MAX_REQUESTS):
            if time.monotonic() >= end:
                break
            try:
                status, headers, body = exchange(conn, "/v1/toolkit/jobs", SLEEP_JOB)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                tally.error(f"submit: {exc!r}")
                conn.close()
            else:
                tally.statuses[status] += 1
                length, job_id = body.get("queue_length"), body.get("job_id")
                refused = status == 429 and "retry-after" in headers and job_id is None
                if status == 202 and isinstance(length, int) and 1 <= length <= LIMIT and job_id:
                    tally.accepted.append(job_id)
                elif not refused:
                    tally.error(f"submit: {status} {headers} {body}")
            time.sleep(PAUSE)
    finally:
        conn.close()
    return tally


def monitor(conn: redis.Redis, queue_key: str, stop: threading.Event, end: float) -> list[int]:
    """Sample the queue's length every few milliseconds until `stop` is set (or `end`)."""
    samples: list[int] = []
    for _ in range(MAX_SAMPLES):
        if stop.is_set() or time.monotonic() >= end:
            break
        samples.append(int(conn.llen(queue_key)))
        stop.wait(SAMPLE_INTERVAL)
    return samples


@pytest.mark.timeout(300)
def test_a_minute_of_polling_and_submitting_loses_nothing_and_holds_the_limit(
    conn: redis.Redis, env: dict[str, str]
) -> None:
    """For 60 s under 120 clients every answer is 200/202/429, the limit holds, jobs run once."""
    port = free_port()
    env = {**env, "MAX_QUEUE_LENGTH": str(LIMIT)}
    queue_key = keys.rq_queue_key("default")
    # One worker of each class, both kept busy by 0.05 s sleep jobs.
    workers = [
        start_worker({**env, "WORKER_CLASS": "fork"}, name="worker-fork"),
        start_worker({**env, "WORKER_CLASS": "simple"}, name="worker-simple"),
    ]
    with running(*workers), running(api := start_api(env, port, workers=2)):
        wait_until(lambda: len(job_workers(conn)) == 2, timeout=30)
        stop = threading.Event()
        started = time.monotonic()
        end = started + SOAK_SECONDS
        with ThreadPoolExecutor(max_workers=POLLERS + SUBMITTERS + 1) as pool:
            sampling = pool.submit(monitor, conn, queue_key, stop, end + 3 * TIMEOUT)
            polls = [pool.submit(poller, port, end) for _ in range(POLLERS)]
            submits = [pool.submit(submitter, port, end) for _ in range(SUBMITTERS)]
            poll_tallies = [future.result(timeout=SOAK_SECONDS + 3 * TIMEOUT) for future in polls]
            submit_tallies = [
                future.result(timeout=SOAK_SECONDS + 3 * TIMEOUT) for future in submits
            ]
            stop.set()
            samples = sampling.result(timeout=TIMEOUT)
        elapsed = time.monotonic() - started

        accepted = [job_id for tally in submit_tallies for job_id in tally.accepted]
        poll_statuses = sum((tally.statuses for tally in poll_tallies), Counter[int]())
        submit_statuses = sum((tally.statuses for tally in submit_tallies), Counter[int]())
        errors = [error for tally in poll_tallies + submit_tallies for error in tally.errors]
        error_count = sum(tally.error_count for tally in poll_tallies + submit_tallies)
        summary = (
            f"{sum(poll_statuses.values())} polls in {elapsed:.1f}s "
            f"({sum(poll_statuses.values()) / elapsed:.0f}/s) {dict(poll_statuses)}; "
            f"submissions {dict(submit_statuses)}: {len(accepted)} accepted, "
            f"{submit_statuses[429]} refused; {len(samples)} queue samples, "
            f"max length {max(samples, default=0)}; {error_count} errors"
        )
        print(f"soak: {summary}")
        assert error_count == 0, f"{summary}; first errors: {errors}"
        assert set(poll_statuses) == {200}, summary
        assert set(submit_statuses) == {202, 429}, summary
        assert len(set(accepted)) == len(accepted), summary
        assert samples, summary
        assert max(samples) <= LIMIT, summary

        # Every accepted job finishes once the submitters have stopped.
        done_key = keys.status_index_key(Status.DONE)
        wait_until(lambda: conn.zcard(done_key) >= len(accepted), timeout=120, interval=0.2)
        finished = FinishedJobRegistry("default", connection=conn)
        wait_until(lambda: finished.count >= len(accepted), timeout=30, interval=0.2)
        assert conn.llen(queue_key) == 0
        assert StartedJobRegistry("default", connection=conn).count == 0
        assert FailedJobRegistry("default", connection=conn).count == 0

    finished_ids = finished.get_job_ids()
    assert Counter(finished_ids) == Counter(accepted), summary
    done = {member.decode() for member in conn.zrange(done_key, 0, -1)}
    assert done == set(accepted), summary
    for status in Status:
        if status is not Status.DONE:
            assert conn.zcard(keys.status_index_key(status)) == 0, status
    # A refused submission leaves no job hash behind.
    assert len(set(conn.scan_iter("rq:job:*"))) == len(accepted), summary

    # The workers log one line per transition: each accepted job started once and finished once.
    lines = [match for worker in workers for match in TRANSITION.findall(worker.output())]
    for transition in ("running", "done"):
        logged = Counter(job_id for job_id, to in lines if to == transition)
        assert logged == Counter(accepted), f"'-> {transition}' lines differ; {summary}"
    for proc in (*workers, api):
        assert "Traceback" not in proc.output(), proc.name
