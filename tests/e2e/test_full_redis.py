"""A Redis with a maxmemory: submissions refused in time and in words, results kept."""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.registry import StartedJobRegistry

from tests.helpers import (
    JOBS_STATUS,
    METRICS,
    RedisServer,
    Reply,
    Samples,
    call,
    free_port,
    job_status,
    jobs_status,
    parse_samples,
    post_job,
    running,
    running_tree,
    service_env,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.e2e

MAXMEMORY = "48mb"
RETRY_AFTER = "7"
GATE_MESSAGE = "Redis is too full to accept more jobs: try again later"
OUT_OF_MEMORY = "Failed to submit the job: Redis is out of memory"
STORING_AGAIN = "Redis is out of memory; storing its outcome again"
# The flood: submitters, submissions each, and a payload of ~150 KB that does not compress.
FLOOD_RESULT_BYTES = 300_000
SUBMITTERS = 4
SUBMISSIONS_EACH = 60
RANDOM_BYTES = 110_000
# Jobs submitted one at a time after the flood, at most, until Redis is full of results.
TOP_UP_MAX = 40
# Written before Redis is made to refuse writes, so that its used memory is clearly over.
FILLER_BYTES = 4 * 1024 * 1024


@pytest.fixture
def capped_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Start a private redis-server with a maxmemory and no eviction, as deployed."""
    server = RedisServer(
        tmp_path, "--maxmemory", MAXMEMORY, "--maxmemory-policy", "noeviction"
    ).start()
    yield server
    server.stop()


def refuse_writes(client: redis.Redis) -> None:
    """Fill Redis a little, then set its maxmemory below what it uses: it refuses every write."""
    client.set("filler", os.urandom(FILLER_BYTES))
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used // 2)


def accept_writes(client: redis.Redis) -> None:
    """Give Redis its maxmemory back."""
    client.config_set("maxmemory", MAXMEMORY)


def health(port: int) -> Reply:
    """Return the answer of GET /health sent with the key."""
    return call(port, "GET", "/health")


def scrape(port: int) -> Samples:
    """GET /metrics with the key, assert a 200, and return every sample."""
    reply = call(port, "GET", METRICS)
    assert reply.status == 200, reply.body
    return parse_samples(reply.body.decode())


def assert_retry_503(reply: Reply, message: str) -> None:
    """Assert `reply` is a 503 JSON envelope with `message` and Retry-After."""
    assert reply.status == 503, reply.body
    assert reply.content_type.startswith("application/json"), reply.body
    assert reply.body["code"] == 503, reply.body
    assert reply.body["message"] == message, reply.body
    assert reply.body["job_id"] is None, reply.body
    assert reply.headers.get("retry-after") == RETRY_AFTER, reply.headers


def large_payload(**labels: int) -> dict[str, Any]:
    """Return an echo payload of ~150 KB that does not compress, marked with `labels`."""
    return {**labels, "data": base64.b64encode(os.urandom(RANDOM_BYTES)).decode()}


@pytest.mark.timeout(120)
def test_a_flood_of_large_jobs_is_refused_in_time_and_every_accepted_job_keeps_its_result(
    capped_redis: RedisServer,
) -> None:
    """Flooded with large jobs, the API refuses with worded 503s, no 500, and keeps every result."""
    env = service_env(
        capped_redis.url, MAX_RESULT_BYTES=str(FLOOD_RESULT_BYTES), RETRY_AFTER_SECONDS=RETRY_AFTER
    )
    port = free_port()
    worker = start_worker(env)
    with running_tree(worker), running(start_api(env, port)):
        lock = threading.Lock()
        submissions: list[Reply] = []
        accepted: dict[str, dict[str, Any]] = {}
        polls: list[Reply] = []
        readings: list[Reply] = []
        flood_over = threading.Event()

        def submit(payload: dict[str, Any]) -> Reply:
            reply = post_job(port, "echo", payload)
            with lock:
                submissions.append(reply)
                if reply.status == 202:
                    accepted[reply.body["job_id"]] = payload
            if reply.status == 503:
                # Read right after a refusal, /health most likely says that jobs are refused too.
                readings.append(health(port))
            return reply

        def submit_many(submitter: int) -> None:
            for n in range(SUBMISSIONS_EACH):
                submit(large_payload(submitter=submitter, n=n))

        def poll() -> None:
            # A poll every 0.2 s (pacing, not synchronisation) leaves room for the flood.
            while not flood_over.wait(0.2):
                polls.append(call(port, "POST", JOBS_STATUS, {"since_seconds": 600}))
                readings.append(health(port))

        poller = threading.Thread(target=poll, name="poller", daemon=True)
        submitters = [
            threading.Thread(target=submit_many, args=(i,), name=f"submitter-{i}", daemon=True)
            for i in range(SUBMITTERS)
        ]
        poller.start()
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{thread.name} still submitting after 60 s"
        flood_over.set()
        poller.join(timeout=30)
        assert not poller.is_alive(), "the poller still polling after 30 s"
        flood_accepted, flood_refused = len(accepted), len(submissions) - len(accepted)

        # The flood's jobs finish: results of all of them fit.
        def all_finished() -> dict[str, str] | None:
            reply = jobs_status(port)
            assert reply.status == 200, reply.body
            seen: dict[str, str] = reply.body["response"]
            finished = all(seen.get(job_id) in ("done", "failed") for job_id in accepted)
            return seen if finished else None

        wait_until(all_finished, timeout=60, interval=0.2)

        # Then one job at a time, each finished before the next, until the results held leave
        # no room for one more: refused with nothing waiting or running, Redis stays full.
        for n in range(TOP_UP_MAX):
            reply = submit(large_payload(top_up=n))
            if reply.status != 202:
                break
            assert wait_finished(port, reply.body["job_id"])["job_status"] == "done"
        else:
            raise AssertionError(f"{TOP_UP_MAX} more jobs one at a time were all accepted")

        statuses = sorted({reply.status for reply in (*submissions, *polls, *readings)})
        assert all(status < 500 or status == 503 for status in statuses), statuses
        refused = [reply for reply in submissions if reply.status != 202]
        for reply in refused:
            assert_retry_503(reply, GATE_MESSAGE)
        assert flood_refused, "the flood was never refused"
        assert flood_accepted, "the flood was never accepted"
        assert polls and all(reply.status == 200 for reply in polls), [r.body for r in polls]
        assert all(reply.status == 200 for reply in readings), [r.body for r in readings]

        # Every accepted job ended done, with its payload as its result.
        seen = jobs_status(port).body["response"]
        assert {job_id: seen[job_id] for job_id in accepted} == dict.fromkeys(accepted, "done")
        for job_id, payload in accepted.items():
            described = job_status(port, job_id).body["response"]
            assert described["job_status"] == "done", described
            assert described["result"] == payload, f"job {job_id}: another result"

        # Nothing changes now: /health and /metrics read the same Redis, and agree.
        final = health(port)
        samples = scrape(port)
        assert final.status == 200, final.body
        assert final.body["response"]["redis"] == "ok"
        accepting = [reading.body["response"]["accepting_jobs"] for reading in readings]
        assert False in accepting, "/health never said that jobs were refused"
        assert (
            samples[("toolkit_jobs_accepting_jobs", ())] == final.body["response"]["accepting_jobs"]
        )
        assert samples[("toolkit_jobs_redis_writable", ())] == 1
        maxmemory = final.body["response"]["maxmemory"]
        assert samples[("toolkit_jobs_redis_maxmemory_bytes", ())] == maxmemory
        # Refused in time: Redis never reached its maxmemory, and every write went through.
        peak = max(reading.body["response"]["used_memory"] for reading in (*readings, final))
        assert peak < maxmemory
        refusals = sum(
            value
            for (name, labels), value in samples.items()
            if name == "toolkit_jobs_submissions_refused_total" and ("reason", "memory") in labels
        )
        assert refusals == len(refused)


@pytest.mark.timeout(60)
def test_a_redis_refusing_writes_answers_503_in_words_and_recovers(
    capped_redis: RedisServer,
) -> None:
    """Redis refusing writes: /health and submissions get worded 503s, reads work, all recovers."""
    env = service_env(capped_redis.url, RETRY_AFTER_SECONDS=RETRY_AFTER)
    port = free_port()
    client = capped_redis.client()
    with contextlib.closing(client), running(start_api(env, port)):
        earlier = submit_ok(port, "echo", {"n": 1})
        refuse_writes(client)

        anonymous = call(port, "GET", "/health", key=None)
        assert anonymous.status == 503, anonymous.body
        assert anonymous.body["message"] == "unhealthy"
        assert anonymous.body["response"] is None
        keyed = health(port)
        assert keyed.status == 503, keyed.body
        assert keyed.body["message"] == "Redis refuses writes"
        assert keyed.body["response"]["redis"] == "refusing writes"
        assert keyed.body["response"]["accepting_jobs"] is False

        samples = scrape(port)
        assert samples[("toolkit_jobs_redis_up", ())] == 1
        assert samples[("toolkit_jobs_redis_writable", ())] == 0
        assert samples[("toolkit_jobs_accepting_jobs", ())] == 0

        refused = post_job(port, "echo", {"n": 2})
        assert_retry_503(refused, OUT_OF_MEMORY)
        raw = str(refused.body)
        for secret in ("SADD", "HSET", "rq:", "maxmemory", str(capped_redis.socket)):
            assert secret not in raw, f"{secret!r} in {raw}"

        # Asserted last, so that reads failing do not hide whether the service recovers.
        read_while_full = jobs_status(port)

        accept_writes(client)
        assert health(port).status == 200
        assert call(port, "GET", "/health", key=None).body["message"] == "healthy"
        assert post_job(port, "echo", {"n": 3}).status == 202

        assert read_while_full.status == 200, read_while_full.body
        assert read_while_full.body["response"] == {earlier: "queued"}


@pytest.mark.timeout(60)
def test_a_running_job_keeps_its_result_through_a_full_redis(capped_redis: RedisServer) -> None:
    """A job that finishes while Redis refuses writes is stored once Redis has room: done."""
    env = service_env(capped_redis.url)
    port = free_port()
    client = capped_redis.client()
    worker = start_worker(env)
    with contextlib.closing(client), running_tree(worker), running(start_api(env, port)):
        job_id = submit_ok(port, "sleep", {"seconds": 3})

        def running_now() -> bool:
            return bool(job_status(port, job_id).body["response"]["job_status"] == "running")

        wait_for(worker, running_now, timeout=15)
        refuse_writes(client)
        try:
            wait_for(worker, lambda: STORING_AGAIN in worker.output(), timeout=20)
        finally:
            accept_writes(client)
        described = wait_finished(port, job_id, timeout=30)
        assert described["job_status"] == "done", (described, worker.output())
        assert described["result"] == {"slept": 3}
        # Stored whole: the execution left the running registry with the job, so no clean-up
        # will later find it there and fail the finished job as abandoned.
        registry = StartedJobRegistry("default", connection=client)
        assert registry.get_job_ids() == []
        assert client.keys("rq:execution:*") == []
        registry.cleanup()
        assert job_status(port, job_id).body["response"]["job_status"] == "done"


@pytest.mark.timeout(60)
def test_a_result_larger_than_max_result_bytes_fails_its_job_saying_so(
    capped_redis: RedisServer,
) -> None:
    """A result over MAX_RESULT_BYTES fails its job naming the limit; a small result is stored."""
    env = service_env(capped_redis.url, MAX_RESULT_BYTES="2048")
    port = free_port()
    worker = start_worker(env)
    with running_tree(worker), running(start_api(env, port)):
        large = submit_ok(port, "echo", {"data": "x" * 10_000})
        small = submit_ok(port, "echo", {"data": "x"})
        failed = wait_finished(port, large)
        assert failed["job_status"] == "failed", failed
        assert "MAX_RESULT_BYTES (2048)" in failed["error"], failed
        assert "result" not in failed
        done = wait_finished(port, small)
        assert done["job_status"] == "done", done
        assert done["result"] == {"data": "x"}
