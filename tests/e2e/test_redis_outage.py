"""A Redis outage: every endpoint answers fast with an envelope, and service resumes after it."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import (
    RedisServer,
    assert_fast_envelope,
    call,
    free_port,
    jobs_status,
    post_job,
    running,
    service_env,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_endpoints_answer_during_a_redis_outage_and_recover_after_it(
    private_redis: RedisServer,
) -> None:
    """With Redis down every endpoint answers an envelope in < 5 s; after a restart all resumes."""
    env = service_env(private_redis.url)
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        before = submit_ok(port, "echo", {"phase": "before"})
        assert wait_finished(port, before)["job_status"] == "done"

        private_redis.stop()

        assert_fast_envelope(
            jobs_status(port), 503, "Failed to retrieve job statuses: Redis unavailable"
        )
        assert_fast_envelope(
            call(port, "POST", "/v1/toolkit/job/status", {"job_id": before}),
            503,
            "Failed to retrieve the job's status: Redis unavailable",
        )
        assert_fast_envelope(
            post_job(port, "echo", {"phase": "during"}),
            503,
            "Failed to submit the job: Redis unavailable",
        )
        assert_fast_envelope(call(port, "GET", "/health", key=None), 503, "unhealthy")
        assert_fast_envelope(call(port, "GET", "/health"), 503, "Redis unavailable")
        authenticated = call(port, "GET", "/v1/toolkit/authenticate")
        assert_fast_envelope(authenticated, 200, "success")
        assert authenticated.body["queue_length"] is None

        # The same socket path, a fresh and empty Redis; gunicorn and the worker keep running.
        private_redis.start()
        wait_until(lambda: call(port, "GET", "/health", key=None).status == 200, timeout=30)
        after = submit_ok(port, "echo", {"phase": "after"})
        described = wait_finished(port, after, timeout=60)
        assert described["job_status"] == "done"
        assert described["result"] == {"phase": "after"}
        assert jobs_status(port).body["response"] == {after: "done"}
        assert worker.popen.poll() is None, worker.output()


def test_a_hung_redis_costs_each_call_at_most_about_the_redis_timeout(
    private_redis: RedisServer,
) -> None:
    """With Redis frozen (SIGSTOP), calls fail within ~REDIS_TIMEOUT, then recover on SIGCONT."""
    env = service_env(private_redis.url, REDIS_TIMEOUT="1")
    port = free_port()
    assert private_redis.process is not None
    with running(start_api(env, port)):
        assert jobs_status(port).status == 200
        private_redis.process.send_signal(signal.SIGSTOP)
        try:
            frozen = jobs_status(port)
            assert frozen.status == 503, frozen.body
            assert frozen.body["message"] == "Failed to retrieve job statuses: Redis unavailable"
            # One socket timeout (1 s), never a retry of it: comfortably below two.
            assert frozen.elapsed < 1.9, f"took {frozen.elapsed:.2f}s"
            health = call(port, "GET", "/health", key=None)
            assert health.status == 503
            assert health.elapsed < 1.9, f"took {health.elapsed:.2f}s"
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        wait_until(lambda: jobs_status(port).status == 200, timeout=10)
