"""GET /metrics: Prometheus text from Redis and from this process (its key: test_auth.py)."""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job

from api import request_metrics
from shared.index import StatusIndex
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import (
    AUTH,
    AUTHENTICATE,
    JOBS,
    Samples,
    assert_envelope,
    indexed,
    post,
    scrape,
    submit,
    wait_until,
)
from worker.main import TrackingMixin
from worker.repair import repair_pass


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return the sample `name` with exactly `labels`; 0 when absent (a series not yet seen)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: Samples) -> set[str]:
    """Return the sample names present."""
    return {name for name, _ in samples}


def test_queue_depth_and_status_counts_follow_the_jobs(
    client: FlaskClient,
    make_app: Callable[..., Flask],
    run_worker: Callable[..., TrackingMixin],
) -> None:
    """Queue depth per RQ queue and jobs per status (zeros included) match what was run."""
    for task in ("echo", "echo", "fail"):
        submit(client, task, {"message": "boom"} if task == "fail" else {})
    run_worker()
    submit(client)
    submit(client)
    videos = make_app(queue_name="videos").test_client()
    assert_envelope(post(videos, JOBS, {"task": "echo"}), 202, queue_id="videos")
    samples = scrape(client)
    assert value(samples, "toolkit_jobs_queue_depth", queue="default") == 2
    assert value(samples, "toolkit_jobs_queue_depth", queue="videos") == 1
    counts = {
        status: samples[("toolkit_jobs_indexed_jobs", (("status", status.value),))]
        for status in Status
    }
    assert counts == {
        Status.QUEUED: 3,
        Status.RUNNING: 0,
        Status.DONE: 2,
        Status.FAILED: 1,
        Status.CANCELED: 0,
    }


def test_an_empty_redis_reports_the_configured_queue_and_every_status_at_zero(
    client: FlaskClient,
) -> None:
    """Before any job, the configured queue's depth and each status count are present as 0."""
    samples = scrape(client)
    assert samples[("toolkit_jobs_queue_depth", (("queue", "default"),))] == 0
    for status in Status:
        assert samples[("toolkit_jobs_indexed_jobs", (("status", status.value),))] == 0
    assert "toolkit_jobs_transitions_total" not in names(samples)


def test_transitions_are_counted_from_redis(
    client: FlaskClient, run_worker: Callable[..., TrackingMixin]
) -> None:
    """Each recorded status change shows as toolkit_jobs_transitions_total{from, to}."""
    submit(client, "echo")
    submit(client, "fail", {"message": "boom"})
    run_worker()
    submit(client, "echo")
    samples = scrape(client)
    transitions = {
        dict(labels)["from"] + ":" + dict(labels)["to"]: count
        for (name, labels), count in samples.items()
        if name == "toolkit_jobs_transitions_total"
    }
    assert transitions == {
        "new:queued": 3,
        "queued:running": 2,
        "running:done": 1,
        "running:failed": 1,
    }


def test_refused_submissions_are_counted(make_app: Callable[..., Flask]) -> None:
    """Every 429 of a full queue adds one to toolkit_jobs_submissions_refused_total."""
    client = make_app(max_queue_length=1).test_client()
    before = value(scrape(client), "toolkit_jobs_submissions_refused_total", reason="queue_full")
    submit(client)
    for _ in range(3):
        assert_envelope(post(client, JOBS, {"task": "echo"}), 429)
    after = value(scrape(client), "toolkit_jobs_submissions_refused_total", reason="queue_full")
    assert after - before == 3


def test_latency_histogram_counts_requests_by_route_rule(client: FlaskClient) -> None:
    """Each request is one histogram sample labelled by method, route rule and status code."""
    # Labelled children are cached per process: drop those earlier tests' requests labelled, so
    # that the labels checked here are computed here.
    request_metrics._children.clear()
    count = "toolkit_jobs_request_duration_seconds_count"
    ok = {"method": "GET", "route": AUTHENTICATE, "status": "200"}
    refused = {"method": "GET", "route": AUTHENTICATE, "status": "401"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    odd_method = {"method": "other", "route": "unmatched", "status": "405"}
    before = scrape(client)
    for _ in range(4):
        client.get(AUTHENTICATE, headers=AUTH)
    client.get(AUTHENTICATE)
    client.get("/no/such/path-1")
    client.get("/no/such/path-2")
    client.open(AUTHENTICATE, method="PROPFIND", headers=AUTH)
    after = scrape(client)
    assert value(after, count, **ok) - value(before, count, **ok) == 4
    assert value(after, count, **refused) - value(before, count, **refused) == 1
    assert value(after, count, **unmatched) - value(before, count, **unmatched) == 2
    assert value(after, count, **odd_method) - value(before, count, **odd_method) == 1
    inf_bucket = {**ok, "le": "+Inf"}
    bucket = "toolkit_jobs_request_duration_seconds_bucket"
    assert value(after, bucket, **inf_bucket) == value(after, count, **ok)
    routes = {dict(labels).get("route") for name, labels in after if name == count}
    assert not any(route and "/no/such" in route for route in routes), routes


def test_oldest_waiting_age_is_measured_from_the_first_queued_job(
    client: FlaskClient,
    conn: redis.Redis,
    index: StatusIndex,
    run_worker: Callable[..., TrackingMixin],
) -> None:
    """The age is Redis time since the oldest queued job was queued; 0 once none waits."""
    age = "toolkit_jobs_oldest_queued_age_seconds"
    assert value(scrape(client), age) == 0
    first = submit(client)
    submit(client)
    found = indexed(conn, first)
    assert found is not None
    queued_at = found[1]
    wait_until(lambda: redis_time_micros(conn) > queued_at)
    low = (redis_time_micros(conn) - queued_at) / MICROS
    measured = value(scrape(client), age)
    high = (redis_time_micros(conn) - queued_at) / MICROS
    assert 0 < low <= measured <= high
    run_worker()
    assert value(scrape(client), age) == 0


def test_redis_down_still_answers_process_metrics(
    client: FlaskClient, down_client: FlaskClient
) -> None:
    """With Redis unreachable /metrics is a 200 with redis_up 0 and the per-process metrics."""
    client.get(AUTHENTICATE, headers=AUTH)
    samples = scrape(down_client)
    assert value(samples, "toolkit_jobs_redis_up") == 0
    assert "toolkit_jobs_submissions_refused_total" in names(samples)
    assert "toolkit_jobs_request_duration_seconds_count" in names(samples)
    assert not names(samples) & {
        "toolkit_jobs_queue_depth",
        "toolkit_jobs_indexed_jobs",
        "toolkit_jobs_oldest_queued_age_seconds",
    }


def test_repairs_are_counted_by_kind_and_metrics_follow_rq(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """After RQ's plain delete and a repair pass, the job leaves the counts; repairs are counted."""
    samples = scrape(client)
    for kind in ("removed", "moved", "added"):
        assert samples[("toolkit_jobs_index_repairs_total", (("kind", kind),))] == 0
    deleted = submit(client, "echo")
    canceled = submit(client, "echo")
    Job.fetch(deleted, connection=conn).delete()
    Job.fetch(canceled, connection=conn).cancel()
    Queue("default", connection=conn).enqueue(RUNNER, "echo", {})
    stale = scrape(client)
    assert value(stale, "toolkit_jobs_indexed_jobs", status="queued") == 2
    repair_pass(index)
    samples = scrape(client)
    assert value(samples, "toolkit_jobs_indexed_jobs", status="queued") == 1
    assert value(samples, "toolkit_jobs_indexed_jobs", status="canceled") == 1
    assert value(samples, "toolkit_jobs_queue_depth", queue="default") == 1
    for kind in ("removed", "moved", "added"):
        assert samples[("toolkit_jobs_index_repairs_total", (("kind", kind),))] == 1
