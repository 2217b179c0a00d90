"""A Redis outage: every endpoint answers fast with an envelope, and service resumes after it."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import Reply, call, jobs_status, submit, submit_ok, wait_finished
from tests.support import (
    RedisServer,
    free_port,
    running,
    service_env,
    start_api,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e

FAST = 5.0


def assert_envelope(reply: Reply, status: int, message_start: str) -> None:
    """Assert `reply` is a fast JSON envelope with `status` and a message starting so."""
    assert reply.content_type.startswith("application/json"), reply.body
    assert reply.status == status, reply.body
    assert reply.body["code"] == status
    assert reply.body["message"].startswith(message_start), reply.body["message"]
    assert reply.elapsed < FAST, f"took {reply.elapsed:.2f}s"


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

        assert_envelope(jobs_status(port), 500, "Failed to retrieve job statuses:")
        assert_envelope(
            call(port, "POST", "/v1/toolkit/job/status", {"job_id": before}), 500, "Redis error:"
        )
        assert_envelope(submit(port, "echo", {"phase": "during"}), 500, "Redis error:")
        assert_envelope(call(port, "GET", "/health", key=None), 503, "Redis unavailable")
        authenticated = call(port, "GET", "/v1/toolkit/authenticate")
        assert_envelope(authenticated, 200, "success")
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
