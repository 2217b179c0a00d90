"""MAX_QUEUE_LENGTH holds under a burst of concurrent submissions to several gunicorn workers."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from shared import keys
from tests.helpers import (
    Reply,
    free_port,
    jobs_status,
    post_job,
    running,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.e2e

LIMIT = 10
SUBMITTERS = 50
RETRY_AFTER = "7"


def test_concurrent_submissions_never_exceed_the_queue_limit(
    conn: redis.Redis, env: dict[str, str]
) -> None:
    """Of 50 simultaneous submissions with room for 10, exactly 10 get 202 and 40 get 429."""
    port = free_port()
    env = {**env, "MAX_QUEUE_LENGTH": str(LIMIT), "RETRY_AFTER_SECONDS": RETRY_AFTER}
    queue_key = keys.rq_queue_key("default")
    with running(start_api(env, port, workers=4)):
        barrier = threading.Barrier(SUBMITTERS)

        def submit_at_once(i: int) -> Reply:
            barrier.wait(timeout=30)
            return post_job(port, "echo", {"n": i})

        with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
            replies = list(pool.map(submit_at_once, range(SUBMITTERS)))

        assert Counter(reply.status for reply in replies) == {202: LIMIT, 429: SUBMITTERS - LIMIT}
        accepted = [reply.body["job_id"] for reply in replies if reply.status == 202]
        # Each accepted submission saw its own queue length: 1, 2, ... 10, none twice.
        lengths = sorted(reply.body["queue_length"] for reply in replies if reply.status == 202)
        assert lengths == list(range(1, LIMIT + 1))
        for reply in replies:
            if reply.status == 429:
                assert reply.body["code"] == 429
                assert reply.body["message"] == f"MAX_QUEUE_LENGTH ({LIMIT}) reached"
                assert reply.headers["retry-after"] == RETRY_AFTER
                assert reply.body["queue_length"] == LIMIT
                assert reply.body["max_queue_length"] == LIMIT
                assert reply.body["job_id"] is None
        assert conn.llen(queue_key) == LIMIT
        assert {job_id.decode() for job_id in conn.lrange(queue_key, 0, -1)} == set(accepted)
        # A refused submission leaves no job hash behind.
        assert len(set(conn.scan_iter("rq:job:*"))) == LIMIT

        with running(start_worker(env)):
            wait_until(lambda: conn.llen(queue_key) == 0, timeout=30)
            expected = dict.fromkeys(accepted, "done")
            wait_until(lambda: jobs_status(port).body["response"] == expected, timeout=30)

            job_id = submit_ok(port, "echo", {"after": "drain"})
            assert wait_finished(port, job_id)["result"] == {"after": "drain"}
