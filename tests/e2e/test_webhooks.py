"""Webhook deliveries for real: gunicorn, `python -m worker` with RQ's scheduler, Redis, and a
loopback receiver answering as scripted. Signatures are checked with the `standardwebhooks`
library, as a receiver would check them."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from standardwebhooks import Webhook

from shared.status import Status
from tests.helpers import (
    METRICS,
    WEBHOOK_SECRET,
    Hit,
    Process,
    Receiver,
    RedisServer,
    call,
    descendant_pids,
    free_port,
    index_view,
    job_status,
    jobs_status,
    kill_outright,
    parse_samples,
    post_job,
    running,
    running_tree,
    service_env,
    start_api,
    start_worker,
    wait_finished,
    wait_until,
    work_horses,
)

pytestmark = pytest.mark.e2e

WEBHOOK_QUEUE = "default:webhooks"
DELIVERY_FUNC = "worker.webhooks.deliver"
SETTLED = ("delivered", "gave_up", "gone", "refused")
OUTCOMES = ("delivered", "failed", "gave_up", "gone", "refused")
# WEBHOOK_BACKOFF_SECONDS of every set-up here: the pause before try n+1 is planned between
# half and all of BACKOFF * 2^(n-1).
BACKOFF = 1
# What a pause may take beyond its plan: RQ's scheduler looks for due jobs once a second, and
# two cores are shared with other test runs.
SLACK = 3.0
# WEBHOOK_TIMEOUT_SECONDS of the quick set-up, whose receiver never answers.
QUICK_TIMEOUT = 1.0


@dataclass(frozen=True)
class Service:
    """One worker and two APIs on a private Redis; the APIs differ in the webhook policy they
    give a job (the worker sends with the policy the job carries)."""

    redis_url: str
    conn: redis.Redis
    port: int  # 3 tries, WEBHOOK_BACKOFF_SECONDS=1
    quick_port: int  # 2 tries, WEBHOOK_TIMEOUT_SECONDS=1
    worker: Process


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Start the module's shared set-up: loopback targets allowed on both sides."""
    server = RedisServer(tmp_path_factory.mktemp("webhooks-redis")).start()
    conn = server.client()
    common = {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_BACKOFF_SECONDS": str(BACKOFF)}
    port, quick_port = free_port(), free_port()
    try:
        worker = start_worker(service_env(server.url, **common))
        with running_tree(worker):
            api = start_api(
                service_env(server.url, WEBHOOK_MAX_ATTEMPTS="3", **common), port, workers=1
            )
            with running(api):
                quick = start_api(
                    service_env(
                        server.url,
                        WEBHOOK_MAX_ATTEMPTS="2",
                        WEBHOOK_TIMEOUT_SECONDS=str(QUICK_TIMEOUT),
                        **common,
                    ),
                    quick_port,
                    workers=1,
                )
                with running(quick):
                    yield Service(server.url, conn, port, quick_port, worker)
    finally:
        conn.close()
        server.stop()


# --- helpers ---------------------------------------------------------------------------------


def submit_hooked(port: int, url: str, payload: dict[str, Any], client_id: str) -> str:
    """Submit an echo job whose ends go to `url`; assert it is accepted and return its id."""
    reply = post_job(port, "echo", payload, id=client_id, webhook_url=url)
    assert reply.status == 202, reply.body
    job_id: str = reply.body["job_id"]
    return job_id


def webhook_state(port: int, job_id: str) -> dict[str, Any]:
    """Return the `webhook` part of the single-job status of `job_id`."""
    reply = job_status(port, job_id)
    assert reply.status == 200, reply.body
    state: dict[str, Any] = reply.body["response"]["webhook"]
    return state


def reached(
    port: int, job_id: str, states: tuple[str, ...], timeout: float, interval: float = 0.05
) -> dict[str, Any]:
    """Wait until the delivery of `job_id`'s end is in one of `states`; return its state."""

    def there() -> dict[str, Any] | None:
        state = webhook_state(port, job_id)
        return state if state["state"] in states else None

    return wait_until(there, timeout=timeout, interval=interval)


def settled(port: int, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until the delivery of `job_id`'s end has an outcome that ends it; return its state."""
    return reached(port, job_id, SETTLED, timeout)


def outcomes(port: int) -> dict[str, float]:
    """Return toolkit_jobs_webhook_deliveries_total by outcome, scraped from /metrics."""
    reply = call(port, "GET", METRICS)
    assert reply.status == 200, reply.body
    samples = parse_samples(reply.body.decode())
    return {
        outcome: samples[("toolkit_jobs_webhook_deliveries_total", (("outcome", outcome),))]
        for outcome in OUTCOMES
    }


def counted_since(port: int, before: dict[str, float]) -> dict[str, float]:
    """Return the outcomes counted since `before`, those that moved only."""
    after = outcomes(port)
    return {name: after[name] - before[name] for name in OUTCOMES if after[name] != before[name]}


def verified(hit: Hit) -> dict[str, Any]:
    """Verify `hit`'s Standard Webhooks signature with the shared secret; return its body."""
    body: dict[str, Any] = Webhook(WEBHOOK_SECRET).verify(hit.body, hit.headers)
    return body


def gaps(hits: list[Hit]) -> list[float]:
    """Return the seconds between consecutive hits."""
    return [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]


def planned_pauses(conn: redis.Redis, delivery_id: str) -> list[int]:
    """Return the pauses RQ was told to wait before each retry of delivery `delivery_id`."""
    intervals = Job.fetch(delivery_id, connection=conn).retry_intervals
    assert intervals, f"delivery {delivery_id} has no retry intervals"
    return list(intervals)


# --- deliveries on the shared set-up ---------------------------------------------------------


def test_one_delivery_is_signed_and_carries_the_completion_envelope(service: Service) -> None:
    """A 2xx receiver gets one POST, verifiable by the standardwebhooks library; state delivered."""
    before = outcomes(service.port)
    with Receiver() as receiver:
        job_id = submit_hooked(service.port, receiver.url, {"greeting": "hi"}, "client-1")
        state = settled(service.port, job_id)
        assert len(receiver.hits) == 1, receiver.hits
    [hit] = receiver.hits
    assert hit.path == "/hook"
    assert hit.headers["content-type"] == "application/json"
    body = verified(hit)
    assert body["code"] == 200
    assert body["id"] == "client-1"
    assert body["job_id"] == job_id
    assert body["response"] == {"greeting": "hi"}
    assert body["message"] == "success"
    assert body["job_status"] == "done"
    assert hit.headers["webhook-id"].startswith("webhook-")
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 60

    assert state["state"] == "delivered", state
    assert state["attempts"] == 1, state
    assert state["last_status"] == 200, state
    assert state["last_error"] is None, state
    assert state["delivered_at"] is not None, state
    assert state["next_attempt_at"] is None, state
    assert counted_since(service.port, before) == {"delivered": 1}


def test_two_failures_then_success_backs_off_and_delivers_on_the_third_try(
    service: Service,
) -> None:
    """500, 500, 200: three signed POSTs of one message id, pauses per the backoff; delivered."""
    before = outcomes(service.port)
    with Receiver(answers=[500, 500], then=200) as receiver:
        job_id = submit_hooked(service.port, receiver.url, {"n": 2}, "client-2")
        state = settled(service.port, job_id, timeout=90)
        hits = list(receiver.hits)
    assert len(hits) == 3, hits
    assert state["state"] == "delivered", state
    assert state["attempts"] == 3, state
    assert state["last_status"] == 200, state
    assert state["next_attempt_at"] is None, state

    message_ids = {hit.headers["webhook-id"] for hit in hits}
    assert len(message_ids) == 1, f"each try must carry the same webhook-id: {message_ids}"
    bodies = [verified(hit) for hit in hits]
    assert all(body["job_id"] == job_id for body in bodies)

    [delivery_id] = message_ids
    planned = planned_pauses(service.conn, delivery_id)
    measured = gaps(hits)
    print(f"\nplanned pauses {planned}, measured gaps {[round(g, 2) for g in measured]}")
    for n, (plan, gap) in enumerate(zip(planned, measured, strict=False)):
        full = BACKOFF * 2**n
        # Equal jitter rounded up, plus the second RQ's scheduler rounds the due time down by.
        assert full / 2 + 1 <= plan <= math.ceil(full) + 1, (n, planned)
        # The pause before try n+2 lies between half and all of BACKOFF * 2^n; a gap between
        # two POSTs also holds the answer's trip back and the scheduler's poll.
        assert full / 2 <= gap <= full + SLACK, (n, planned, measured)
    assert counted_since(service.port, before) == {"failed": 2, "delivered": 1}


def test_a_receiver_that_never_answers_times_out_each_try_then_gives_up(
    service: Service,
) -> None:
    """A hung receiver: each try ends after WEBHOOK_TIMEOUT_SECONDS; after 2 tries, gave_up."""
    before = outcomes(service.quick_port)
    with Receiver(answers=[], then="hang") as receiver:
        job_id = submit_hooked(service.quick_port, receiver.url, {"n": 3}, "client-3")
        wait_until(lambda: len(receiver.hits) == 2, timeout=60)
        second = receiver.hits[1]
        state = settled(service.quick_port, job_id, timeout=30)
        gave_up_seen = time.monotonic()
        hits = list(receiver.hits)
    assert len(hits) == 2, hits
    assert state["state"] == "gave_up", state
    assert state["attempts"] == 2, state
    assert state["last_status"] is None, state
    assert state["delivered_at"] is None, state
    assert "within 1.0 s" in (state["last_error"] or ""), state

    # The last try waited the timeout for an answer, and not much more.
    waited = gave_up_seen - second.at
    print(f"\nlast try ended {waited:.2f}s after the receiver got it")
    assert QUICK_TIMEOUT * 0.9 <= waited <= QUICK_TIMEOUT + SLACK, waited
    # The first try's timeout, then its pause (at most BACKOFF), came before the second POST.
    [gap] = gaps(hits)
    assert QUICK_TIMEOUT * 0.9 <= gap <= QUICK_TIMEOUT + BACKOFF + SLACK, gap
    assert counted_since(service.quick_port, before) == {"failed": 2, "gave_up": 1}


# Long enough a pause (2 to 4 s for the first) to look at the scheduled retry before it runs.
LONG_BACKOFF = 4


def test_a_retry_is_not_scheduled_before_the_time_the_status_announces(service: Service) -> None:
    """After a failed try, RQ holds the retry until next_attempt_at at least, not before."""
    clock_offset = time.time() - time.monotonic()
    port = free_port()
    env = service_env(
        service.redis_url,
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_BACKOFF_SECONDS=str(LONG_BACKOFF),
        WEBHOOK_MAX_ATTEMPTS="2",
    )
    scheduled = ScheduledJobRegistry(WEBHOOK_QUEUE, connection=service.conn)
    with Receiver(answers=[500], then=200) as receiver, running(start_api(env, port, workers=1)):
        job_id = submit_hooked(port, receiver.url, {"n": 8}, "client-8")
        wait_until(lambda: receiver.hits, timeout=30)
        delivery_id = receiver.hits[0].headers["webhook-id"]
        retrying = reached(port, job_id, ("retrying",), timeout=30, interval=0.02)
        announced = epoch(retrying["next_attempt_at"])
        due = wait_until(lambda: service.conn.zscore(scheduled.key, delivery_id), timeout=5)
        state = settled(port, job_id, timeout=30)
        hits = list(receiver.hits)
    [plan] = planned_pauses(service.conn, delivery_id)
    # The pause drawn, rounded up, plus the second RQ's scheduler rounds off.
    assert LONG_BACKOFF / 2 + 1 <= plan <= LONG_BACKOFF + 1, plan
    assert state["state"] == "delivered", state
    assert len(hits) == 2, hits
    retried_at = hits[1].at + clock_offset
    print(f"\nplanned {plan}s; announced {announced:.3f}, RQ due {due:.3f}, POST {retried_at:.3f}")
    # RQ scores a scheduled job in whole seconds, cut down (registry.schedule): a due time
    # earlier than announced would run the retry up to a second before its pause is over.
    assert due >= announced - 0.01, f"RQ runs the retry {announced - due:.3f}s early"
    assert retried_at >= announced - 0.01, f"retried {announced - retried_at:.3f}s early"


def epoch(iso: str) -> float:
    """Return the epoch seconds of a time as the API writes it (ISO 8601, UTC, "Z")."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_410_stops_the_delivery_for_good(service: Service) -> None:
    """A 410 answer: one POST only, state gone, no retry even once the backoff has passed."""
    before = outcomes(service.port)
    with Receiver(answers=[410], then=200) as receiver:
        job_id = submit_hooked(service.port, receiver.url, {"n": 4}, "client-4")
        state = settled(service.port, job_id)
        delivery_id = receiver.hits[0].headers["webhook-id"]
        finished = FinishedJobRegistry(WEBHOOK_QUEUE, connection=service.conn)
        wait_until(lambda: delivery_id in finished, timeout=30)
        scheduled = ScheduledJobRegistry(WEBHOOK_QUEUE, connection=service.conn)
        assert delivery_id not in scheduled
        # Not a synchronisation: a retry would come within the longest first pause plus the
        # scheduler's poll, and what is checked is that none comes.
        time.sleep(BACKOFF + SLACK)
        hits = list(receiver.hits)
    assert len(hits) == 1, hits
    assert state["state"] == "gone", state
    assert state["attempts"] == 1, state
    assert state["last_status"] == 410, state
    assert webhook_state(service.port, job_id) == state
    assert counted_since(service.port, before) == {"gone": 1}


def test_deliveries_are_rq_jobs_of_their_own_queue_and_stay_out_of_the_index(
    service: Service,
) -> None:
    """RQ's own classes see the delivery queue and its finished job; the index never does."""
    with Receiver() as receiver:
        job_id = submit_hooked(service.port, receiver.url, {"n": 7}, "client-7")
        assert settled(service.port, job_id)["state"] == "delivered"
    delivery_id = receiver.hits[0].headers["webhook-id"]

    names = {queue.name for queue in Queue.all(connection=service.conn)}
    assert {"default", WEBHOOK_QUEUE} <= names, names
    finished = FinishedJobRegistry(WEBHOOK_QUEUE, connection=service.conn)
    wait_until(lambda: delivery_id in finished, timeout=30)
    delivery = Job.fetch(delivery_id, connection=service.conn)
    assert delivery.origin == WEBHOOK_QUEUE
    assert delivery.func_name == DELIVERY_FUNC
    assert list(delivery.args) == [job_id, "done"]
    assert delivery_id not in FinishedJobRegistry("default", connection=service.conn)

    view = index_view(service.conn)
    assert view.get(job_id) is Status.DONE
    assert not [member for member in view if member.startswith("webhook-")], view
    reply = jobs_status(service.port)
    assert reply.status == 200, reply.body
    listed: dict[str, str] = reply.body["response"]
    assert listed.get(job_id) == "done"
    assert not [member for member in listed if member.startswith("webhook-")], listed


# --- set-ups of their own --------------------------------------------------------------------


def test_a_host_refused_at_send_time_is_never_posted_to(
    conn: redis.Redis, redis_server: RedisServer
) -> None:
    """localhost accepted by the API but not by the worker: refused at send time, no POST."""
    port = free_port()
    api_env = service_env(redis_server.url, WEBHOOK_ALLOW_PRIVATE="true")
    worker_env = service_env(redis_server.url, WEBHOOK_ALLOW_PRIVATE="false")
    with Receiver() as receiver, running(start_api(api_env, port, workers=1)):
        url = f"http://localhost:{receiver.server.server_port}/hook"
        job_id = submit_hooked(port, url, {"n": 5}, "client-5")
        worker = start_worker(worker_env)
        with running_tree(worker):
            state = settled(port, job_id, timeout=60)
            assert wait_finished(port, job_id)["job_status"] == "done"
        counted = {name: count for name, count in outcomes(port).items() if count}
        assert receiver.hits == []
    assert state["state"] == "refused", state
    assert state["attempts"] == 1, state
    assert state["last_status"] is None, state
    assert "public address" in (state["last_error"] or ""), state
    assert "localhost" in state["last_error"], state
    assert counted == {"refused": 1}, counted


# A worker killed outright leaves its delivery leased for up to 30 s (worker/main.py); a live
# worker then retries it. RQ's scheduler lock of the dead worker lasts about a minute longer.
KILLED_DELIVERY_BOUND = 150.0


@pytest.mark.timeout(300)
def test_a_delivery_whose_worker_is_killed_mid_try_is_retried_not_lost(
    conn: redis.Redis, redis_server: RedisServer
) -> None:
    """SIGKILL the worker while its try waits on the receiver: another worker delivers it."""
    env = service_env(
        redis_server.url,
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_TIMEOUT_SECONDS="60",
        WEBHOOK_BACKOFF_SECONDS=str(BACKOFF),
        WEBHOOK_MAX_ATTEMPTS="3",
    )
    port = free_port()
    victim = start_worker(env, name="worker-a")
    with (
        Receiver(answers=["hang"], then=200) as receiver,
        running(start_api(env, port, workers=1)),
        running_tree(victim),
    ):
        job_id = submit_hooked(port, receiver.url, {"n": 6}, "client-6")
        wait_until(lambda: receiver.hits, timeout=60)
        delivery_id = receiver.hits[0].headers["webhook-id"]
        started = StartedJobRegistry(WEBHOOK_QUEUE, connection=conn)
        # `in`, not get_job_ids(): that would sweep the registry from here.
        assert delivery_id in started
        # The try runs in a work-horse of the victim's delivery worker (its child).
        horses = [h for child in descendant_pids(victim.popen.pid) for h in work_horses(child)]
        assert horses, "the victim has no work-horse running the try"
        assert webhook_state(port, job_id)["state"] == "delivering"

        killed_at = kill_outright(victim)
        rescuer = start_worker(env, name="worker-b")
        with running_tree(rescuer):
            state = settled(port, job_id, timeout=KILLED_DELIVERY_BOUND)
            seconds = time.monotonic() - killed_at
            print(f"\ndelivered {seconds:.1f}s after its worker was SIGKILLed mid-try")
            hits = list(receiver.hits)
            assert "Traceback" not in rescuer.output(), rescuer.output()
    assert state["state"] == "delivered", state
    assert state["attempts"] == 2, state
    assert state["last_status"] == 200, state
    assert len(hits) == 2, hits
    assert {hit.headers["webhook-id"] for hit in hits} == {delivery_id}
    assert [verified(hit)["job_id"] for hit in hits] == [job_id, job_id]
