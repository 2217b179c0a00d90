"""Faults injected into real processes: workers killed or stopped mid-job, the API killed
mid-request, Redis crashing or gone for 30 s, and workers whose clocks are off."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker
from rq.job import Job, JobStatus

from shared import keys
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import (
    SHM,
    WORKERS_PER_PROCESS,
    Process,
    RedisServer,
    Reply,
    alive,
    call,
    clear_stale_faketime_files,
    default_env,
    free_port,
    index_status,
    indexed,
    job_status,
    job_workers,
    jobs_status,
    kill_outright,
    post_job,
    running,
    running_tree,
    service_env,
    start_api,
    start_skewed_worker,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
    worker_running,
)

pytestmark = pytest.mark.e2e

QUEUE = keys.rq_queue_key("default")
FAKETIME = shutil.which("faketime")


@pytest.fixture
def faketime() -> Iterator[str]:
    """Return the faketime binary; its absence fails the test (`make test` installs it). The
    files of the wrappers the test ended are removed after it."""
    assert FAKETIME, "faketime is not installed: run `make test`, or apt-get install faketime"
    yield FAKETIME
    clear_stale_faketime_files()


def listing(port: int, since_seconds: float = 600) -> dict[str, str]:
    """Return {job_id: status} from POST /v1/toolkit/jobs/status, asserting a 200."""
    reply = jobs_status(port, since_seconds)
    assert reply.status == 200, reply.body
    statuses: dict[str, str] = reply.body["response"]
    return statuses


# --- a worker dies or is stopped mid-job ---------------------------------------------------

# A dead worker's job is failed within about a minute (worker/main.py); this leaves room.
ABANDONED_BOUND = 120.0


@pytest.mark.timeout(240)
def test_sigkilled_worker_mid_job_its_job_fails_within_two_minutes_by_default(
    conn: redis.Redis, redis_server: RedisServer
) -> None:
    """With default settings a job whose worker is SIGKILLed is failed ("died") within 120 s."""
    env = default_env(redis_server.url)
    port = free_port()
    workers = [start_worker(env, name="worker-a"), start_worker(env, name="worker-b")]
    with running_tree(*workers), running(start_api(env, port)):
        blocked = WORKERS_PER_PROCESS * len(workers)
        wait_until(lambda: conn.info("clients")["blocked_clients"] == blocked, timeout=30)
        long_id = submit_ok(port, "sleep", {"seconds": 300})
        wait_until(lambda: index_status(conn, long_id) is Status.RUNNING, timeout=30)
        victim = worker_running(conn, long_id, workers)
        [survivor] = [proc for proc in workers if proc is not victim]
        # The victim is busy with the long job, so only the survivor can take this one.
        short_id = submit_ok(port, "sleep", {"seconds": 3})
        wait_until(lambda: index_status(conn, short_id) is Status.RUNNING, timeout=30)
        assert worker_running(conn, short_id, workers) is survivor

        killed_at = kill_outright(victim)
        echo_id = submit_ok(port, "echo", {"after": "kill"})
        wait_until(
            lambda: listing(port).get(long_id) == "failed", timeout=ABANDONED_BOUND, interval=0.5
        )
        seconds = time.monotonic() - killed_at
        print(f"\nabandoned job marked failed {seconds:.1f}s after its worker was SIGKILLed")
        assert seconds < ABANDONED_BOUND, f"marked failed only after {seconds:.1f}s"

        assert Job.fetch(long_id, connection=conn).get_status() == JobStatus.FAILED
        described = job_status(port, long_id).body["response"]
        assert described["job_status"] == "failed", described
        assert described["error"].startswith("The worker running this job died"), described
        # The survivor's jobs, one running during the kill and one submitted after it.
        for job_id, result in ((short_id, {"slept": 3}), (echo_id, {"after": "kill"})):
            finished = wait_finished(port, job_id, timeout=30)
            assert finished["job_status"] == "done", finished
            assert finished["result"] == result
            assert worker_running(conn, job_id, workers) is survivor
        assert listing(port) == {long_id: "failed", short_id: "done", echo_id: "done"}
        assert survivor.popen.poll() is None, survivor.output()
        assert "Traceback" not in survivor.output()


def test_sigterm_mid_job_the_worker_finishes_it_and_exits(
    conn: redis.Redis, env: dict[str, str]
) -> None:
    """SIGTERM mid-job: the job still ends done, the worker exits 0 and leaves RQ's registry."""
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        job_id = submit_ok(port, "sleep", {"seconds": 3})
        wait_until(lambda: index_status(conn, job_id) is Status.RUNNING, timeout=30)
        name = Job.fetch(job_id, connection=conn).worker_name
        assert name in {w.name for w in Worker.all(connection=conn)}

        signalled = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        worker.signal(signal.SIGTERM)
        wait_until(lambda: worker.popen.poll() is not None, timeout=20, interval=0.1)
        assert worker.popen.returncode == 0, worker.output()

        described = job_status(port, job_id).body["response"]
        assert described["job_status"] == "done", described
        assert described["result"] == {"slept": 3}
        assert described["ended_at"] > signalled, "the job ended before the signal: no test"
        assert listing(port) == {job_id: "done"}
        assert conn.zcard(keys.status_index_key(Status.RUNNING)) == 0
        assert name not in {w.name for w in Worker.all(connection=conn)}
        assert "warm shut down requested" in worker.output()


# --- the API is killed mid-request ---------------------------------------------------------

SUBMITTERS = 20
# Kill once this many submissions were accepted: about a second of load on two cores.
KILL_AFTER_ACCEPTED = 200
# What RQ writes into every job hash it enqueues, and needs to run the job.
JOB_FIELDS = {b"data", b"origin", b"status", b"created_at", b"enqueued_at", b"description"}


class Submissions:
    """Echo jobs posted by many threads until the API stops answering."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[str] = []
        self.refused: list[Reply] = []
        # Payloads whose request was cut off in flight: the job may or may not exist.
        self.cut_off: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._submit, args=(n,), daemon=True) for n in range(SUBMITTERS)
        ]

    def _submit(self, submitter: int) -> None:
        sequence = 0
        while not self.stop.is_set():
            payload = {"submitter": submitter, "sequence": sequence}
            try:
                reply = post_job(self.port, "echo", payload)
            except ConnectionRefusedError:
                return  # nothing listens any more: this one was never sent
            except (OSError, http.client.HTTPException, ValueError):
                self.cut_off.append(payload)
                return
            if reply.status == 202:
                self.accepted.append(reply.body["job_id"])
            else:
                self.refused.append(reply)
            sequence += 1


@pytest.fixture
def submissions() -> Iterator[Callable[[int], Submissions]]:
    """Return a starter of submitter threads, stopped and joined on the way out."""
    started: list[Submissions] = []

    def start(port: int) -> Submissions:
        subs = Submissions(port)
        started.append(subs)
        for thread in subs.threads:
            thread.start()
        return subs

    yield start
    for subs in started:
        subs.stop.set()
        for thread in subs.threads:
            thread.join(timeout=30)


def test_api_killed_mid_request_leaves_no_half_written_job(
    conn: redis.Redis, env: dict[str, str], submissions: Callable[[int], Submissions]
) -> None:
    """SIGKILLing gunicorn under load leaves only whole jobs: queued, indexed, and all runnable."""
    port = free_port()
    api = start_api(env, port, workers=2)
    with running(api):
        subs = submissions(port)
        wait_until(lambda: len(subs.accepted) >= KILL_AFTER_ACCEPTED, timeout=30)
        os.killpg(api.popen.pid, signal.SIGKILL)
        api.popen.wait(timeout=10)
        for thread in subs.threads:
            thread.join(timeout=30)
            assert not thread.is_alive()
    assert subs.refused == []
    assert subs.cut_off, "no request was cut off: the kill came between requests"

    queued = [job_id.decode() for job_id in conn.lrange(QUEUE, 0, -1)]
    assert len(set(queued)) == len(queued), "a job id is in the queue twice"
    assert set(subs.accepted) <= set(queued), "a 202 was answered for a job that is not queued"
    print(
        f"\ngunicorn killed after {len(subs.accepted)} accepted submissions; of the"
        f" {len(subs.cut_off)} cut off, {len(queued) - len(subs.accepted)} had been enqueued"
    )
    prefix = "rq:job:"
    job_hashes = {
        key.decode().removeprefix(prefix)
        for key in conn.scan_iter(f"{prefix}*")
        if ":" not in key.decode().removeprefix(prefix)
    }
    assert job_hashes == set(queued), "a job hash without a queue entry, or the reverse"
    indexed = {m.decode() for m in conn.zrange(keys.status_index_key(Status.QUEUED), 0, -1)}
    assert indexed == set(queued), "the index and the queue disagree"
    for status in Status:
        if status is not Status.QUEUED:
            assert conn.zcard(keys.status_index_key(status)) == 0, status
    with conn.pipeline(transaction=False) as pipe:
        for job_id in queued:
            pipe.hgetall(keys.rq_job_key(job_id))
        hashes = pipe.execute()
    for job_id, fields in zip(queued, hashes, strict=True):
        assert set(fields) >= JOB_FIELDS, (job_id, sorted(JOB_FIELDS - set(fields)))
        assert fields[b"status"] == b"queued", job_id
        assert fields[b"origin"] == b"default", job_id
    for job in Job.fetch_many(queued, connection=conn):
        assert job is not None
        assert job.func_name == RUNNER
        assert job.args[0] == "echo"

    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        # The client retries a submission whose answer it never got.
        retried = subs.cut_off[0]
        again = submit_ok(port, "echo", retried)
        everything = [*queued, again]

        def all_done() -> bool:
            with conn.pipeline(transaction=False) as pipe:
                for job_id in everything:
                    pipe.zscore(keys.status_index_key(Status.DONE), job_id)
                return all(score is not None for score in pipe.execute())

        wait_until(all_done, timeout=90, interval=0.5)
        assert wait_finished(port, again)["result"] == retried
        assert conn.llen(QUEUE) == 0
        statuses = listing(port)
        assert len(statuses) == len(everything)
        assert set(statuses.values()) == {"done"}
        assert worker.popen.poll() is None, worker.output()


# --- Redis crashes, or is gone for a while -------------------------------------------------


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Start a private redis-server persisting to an AOF fsynced every second."""
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec").start()
    yield server
    server.stop()


def crash(server: RedisServer) -> None:
    """SIGKILL the redis-server: a crash, with no chance to write anything on the way out."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=10)
    server.process = None


def test_redis_restart_after_a_crash_keeps_done_jobs_aof_everysec(aof_redis: RedisServer) -> None:
    """30 done jobs are still done after Redis (AOF everysec) is SIGKILLed and restarted."""
    env = service_env(aof_redis.url)
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        ids = [submit_ok(port, "echo", {"n": n}) for n in range(30)]
        expected = dict.fromkeys(ids, "done")
        wait_until(lambda: listing(port) == expected, timeout=60, interval=0.2)
        # Not a synchronisation: appendfsync everysec may lose the last second of writes in a
        # crash, and what is checked is that states older than that survive one.
        time.sleep(2)
        crash(aof_redis)
        aof_redis.start()

        # Neither gunicorn nor the worker is restarted: both reconnect by themselves.
        wait_until(lambda: call(port, "GET", "/health", key=None).status == 200, timeout=30)
        assert listing(port) == expected
        conn = aof_redis.client()
        try:
            for n, job in enumerate(Job.fetch_many(ids, connection=conn)):
                assert job is not None
                assert job.get_status() == JobStatus.FINISHED
                assert job.return_value() == {"n": n}
            for job_id in ids:
                assert index_status(conn, job_id) is Status.DONE
        finally:
            conn.close()
        for job_id in ids[:3]:
            assert job_status(port, job_id).body["response"]["job_status"] == "done"
        after = submit_ok(port, "echo", {"after": "crash"})
        described = wait_finished(port, after, timeout=60)
        assert described["job_status"] == "done", described
        assert worker.popen.poll() is None, worker.output()


OUTAGE_SECONDS = 30
ANSWER_WITHIN = 3.0
RECOVER_WITHIN = 90.0
RETRYING = re.compile(r"could not connect to Redis instance: .*? retrying in (\d+) seconds")


@pytest.mark.timeout(240)
def test_redis_unreachable_for_30s_then_recovery_without_restarts(
    private_redis: RedisServer,
) -> None:
    """Redis gone 30 s: each endpoint answers an envelope in < 3 s; all recovers within 90 s."""
    env = service_env(private_redis.url)
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        before = submit_ok(port, "echo", {"phase": "before"})
        assert wait_finished(port, before)["job_status"] == "done"

        probes: dict[str, tuple[Callable[[], Reply], set[int]]] = {
            "jobs/status": (lambda: jobs_status(port), {500, 503}),
            "job/status": (lambda: job_status(port, before), {500, 503}),
            "submit": (lambda: post_job(port, "echo", {"phase": "during"}), {500, 503}),
            "authenticate": (lambda: call(port, "GET", "/v1/toolkit/authenticate"), {200}),
            "health": (lambda: call(port, "GET", "/health", key=None), {503}),
        }
        slowest = dict.fromkeys(probes, 0.0)
        private_redis.stop()
        outage_began = time.monotonic()
        for second in range(OUTAGE_SECONDS):
            for name, (probe, statuses) in probes.items():
                reply = probe()
                assert reply.content_type.startswith("application/json"), (name, reply.body)
                assert reply.status in statuses, (name, reply.body)
                assert reply.body["code"] == reply.status, (name, reply.body)
                assert reply.elapsed < ANSWER_WITHIN, f"{name} took {reply.elapsed:.2f}s"
                slowest[name] = max(slowest[name], reply.elapsed)
            assert worker.popen.poll() is None, worker.output()
            # Pacing, one round a second; nothing is waited for here.
            time.sleep(max(0.0, outage_began + second + 1 - time.monotonic()))
        worst = max(slowest.values())
        print(f"\nslowest answer during the outage: {worst:.3f}s; per endpoint: {slowest}")

        delays = {int(d) for d in RETRYING.findall(worker.output())}
        assert {1, 2, 4, 8} <= delays, f"no backoff in the worker's retries: {sorted(delays)}"

        private_redis.start()
        restarted = time.monotonic()
        wait_until(
            lambda: call(port, "GET", "/health", key=None).status == 200, timeout=RECOVER_WITHIN
        )
        after = submit_ok(port, "echo", {"phase": "after"})
        left = RECOVER_WITHIN - (time.monotonic() - restarted)
        described = wait_finished(port, after, timeout=max(left, 1.0))
        assert described["job_status"] == "done", described
        recovered = time.monotonic() - restarted
        print(f"recovered {recovered:.1f}s after Redis came back")
        assert recovered < RECOVER_WITHIN
        assert listing(port) == {after: "done"}
        assert worker.popen.poll() is None, worker.output()


# --- workers whose clocks are off ----------------------------------------------------------

SKEW_SECONDS = {"+7m": 420.0, "-7m": -420.0}
# A worker under faketime hangs in its last shutdown step (helpers.worker_argv), after
# it has left RQ's registry: give it this long, then kill it.
SKEWED_GRACE = 3.0


@pytest.mark.usefixtures("faketime")
@pytest.mark.parametrize("offset", ["+7m", "-7m"])
def test_clock_skew_a_worker_records_changes_at_redis_time(
    conn: redis.Redis, env: dict[str, str], offset: str
) -> None:
    """A worker 7 min ahead or behind still lands its job's change at Redis time in the index."""
    port = free_port()
    worker = start_skewed_worker(env, offset, name=f"worker{offset}")
    with running_tree(worker, grace=SKEWED_GRACE), running(start_api(env, port)):
        [registered] = wait_until(lambda: job_workers(conn), timeout=30)
        # The worker wrote its birth date with its own clock: it really is off.
        skew = registered.birth_date.timestamp() - redis_time_micros(conn) / MICROS
        assert abs(skew - SKEW_SECONDS[offset]) < 30, f"the worker's clock is off by {skew:.0f}s"

        job_id = submit_ok(port, "echo", {"offset": offset})
        assert wait_finished(port, job_id)["job_status"] == "done"
        assert listing(port, since_seconds=5) == {job_id: "done"}
        entry = indexed(conn, job_id)
        assert entry is not None
        status, score = entry
        assert status is Status.DONE
        scored_at = score / MICROS
        off_by = scored_at - redis_time_micros(conn) / MICROS
        assert abs(off_by) < 5, f"scored {off_by:.0f}s away from Redis time"
        # A window that opens after the change excludes it: the score is not in the future.
        wait_until(lambda: redis_time_micros(conn) / MICROS > scored_at + 1.5, timeout=5)
        assert job_id not in listing(port, since_seconds=1)


@pytest.mark.usefixtures("faketime")
@pytest.mark.parametrize(
    ("runner_offset", "sweeper_offset"),
    [(None, "+7m"), ("-7m", None)],
    ids=["sweeper-7m-ahead", "runner-7m-behind"],
)
def test_clock_skew_between_workers_does_not_fail_a_running_job(
    conn: redis.Redis,
    redis_server: RedisServer,
    runner_offset: str | None,
    sweeper_offset: str | None,
) -> None:
    """Clocks 7 min apart: one worker's registry sweep leaves the other's running job alone."""
    env = default_env(redis_server.url)
    port = free_port()
    runner = start_worker_at(env, runner_offset, name="runner")
    with running_tree(runner, grace=SKEWED_GRACE), running(start_api(env, port)):
        job_id = submit_ok(port, "sleep", {"seconds": 12})
        wait_until(lambda: index_status(conn, job_id) is Status.RUNNING, timeout=30)
        sweeper = start_worker_at(env, sweeper_offset, name="sweeper")
        with running_tree(sweeper, grace=SKEWED_GRACE):
            # A worker cleans the queue's registries as it starts, and logs it.
            wait_until(lambda: "cleaning registries for queue" in sweeper.output(), timeout=20)
            described = job_status(port, job_id).body["response"]
            assert described["job_status"] == "running", (
                f"swept while its worker runs it: {described.get('error')}"
            )
            assert index_status(conn, job_id) is Status.RUNNING
        described = wait_finished(port, job_id, timeout=30)
        assert described["job_status"] == "done", described


def start_worker_at(env: dict[str, str], offset: str | None, name: str) -> Process:
    """Start a worker, under faketime when `offset` is given."""
    if offset is None:
        return start_worker(env, name=name)
    return start_skewed_worker(env, offset, name=name)


def test_stale_faketime_files_are_cleared_and_live_ones_kept() -> None:
    """The files of a faketime wrapper that is gone are removed; a running one's are kept."""
    dead = next(pid for pid in range(4_194_303, 4_000_000, -1) if not alive(pid))
    stale = [SHM / f"sem.faketime_sem_{dead}", SHM / f"faketime_shm_{dead}"]
    live = SHM / f"faketime_shm_{os.getpid()}"
    other = SHM / f"faketime-unrelated-{dead}"
    for path in [*stale, live, other]:
        path.write_bytes(b"x")
    try:
        assert sorted(clear_stale_faketime_files()) == sorted(stale)
        assert not any(path.exists() for path in stale)
        assert live.exists() and other.exists()
    finally:
        for path in (live, other):
            path.unlink(missing_ok=True)
