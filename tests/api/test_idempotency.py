"""Named submissions: a client's own job_id, or an Idempotency-Key, names one job that never runs
twice; RQ's own unique enqueue goes through the same tracked path."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq.exceptions import DuplicateJobError
from rq.job import Job
from werkzeug.test import TestResponse

from api import jobs
from shared import keys, tasks
from shared.queue import TrackedQueue
from shared.status import Status
from tests.helpers import (
    AUTH,
    JOBS,
    assert_envelope,
    describe_job,
    index_status,
    post,
    queue_length,
    submit,
)
from worker.main import TrackingMixin

KEY = "order-4711/attempt"
KEY_JOB_ID = "idem-" + hashlib.sha256(KEY.encode()).hexdigest()
REQUEST = {"task": "echo", "payload": {"n": 1, "nested": {"a": [1, 2], "b": "x"}}, "id": "c-1"}


def keyed(key: str) -> dict[str, str]:
    """Return the headers of a request with the API key and `key` as its Idempotency-Key."""
    return {**AUTH, "Idempotency-Key": key}


def accepted(resp: TestResponse, job_id: str, replayed: bool) -> dict[str, Any]:
    """Assert `resp` is a 202 for job `job_id`, a replay or not; return its envelope."""
    body = assert_envelope(resp, 202)
    assert body["job_id"] == job_id
    assert body["message"] == "processing"
    assert body["response"]["job_id"] == job_id
    assert resp.headers["Location"].endswith(f"?job_id={job_id}")
    if replayed:
        assert resp.headers.get("Idempotent-Replayed") == "true"
    else:
        assert "Idempotent-Replayed" not in resp.headers
    return body


def reordered(value: Any) -> Any:
    """Return `value` with every object's keys in reverse order (the same JSON document)."""
    if isinstance(value, dict):
        return {name: reordered(value[name]) for name in reversed(list(value))}
    return value


def refused_as_other_request(resp: TestResponse, job_id: str) -> None:
    """Assert `resp` is the 422 of a name already used for a different request."""
    body = assert_envelope(resp, 422)
    assert body["job_id"] == job_id
    assert "different request" in body["message"], body["message"]


def test_a_job_id_in_the_body_is_the_jobs_id(client: FlaskClient, conn: redis.Redis) -> None:
    """A submission naming job_id creates the job under exactly that id, in RQ and the index."""
    resp = post(client, JOBS, {**REQUEST, "job_id": "invoice_42-A"})
    body = accepted(resp, "invoice_42-A", replayed=False)
    assert body["response"]["job_status"] == "queued"
    assert Job.fetch("invoice_42-A", connection=conn).id == "invoice_42-A"
    assert conn.lrange(keys.rq_queue_key("default"), 0, -1) == [b"invoice_42-A"]
    assert index_status(conn, "invoice_42-A") is Status.QUEUED
    assert describe_job(client, "invoice_42-A")["job_status"] == "queued"


def test_the_same_named_request_twice_is_one_job(client: FlaskClient, conn: redis.Redis) -> None:
    """Resubmitting a job_id with the same request (keys in any order) answers with the first
    job, marked as a replay, and enqueues nothing."""
    first = post(client, JOBS, {**REQUEST, "job_id": "once"})
    accepted(first, "once", replayed=False)
    again = post(client, JOBS, reordered({**REQUEST, "job_id": "once"}))
    body = accepted(again, "once", replayed=True)
    assert body["response"] == {"job_id": "once", "task": "echo", "job_status": "queued"}
    assert queue_length(conn) == 1
    transitions = conn.hgetall(keys.transitions_key())
    assert transitions == {b"new:queued": b"1"}


@pytest.mark.parametrize(
    "changed",
    [
        {"payload": {"n": 2, "nested": {"a": [1, 2], "b": "x"}}},
        {"payload": {"n": 1, "nested": {"a": [2, 1], "b": "x"}}},
        {"payload": {}},
        {"task": "sleep", "payload": {"seconds": 1}},
        {"id": "c-2"},
        {"webhook_url": "https://hooks.example.com/x"},
    ],
)
def test_the_same_job_id_for_another_request_is_refused(
    client: FlaskClient, conn: redis.Redis, changed: dict[str, Any]
) -> None:
    """Reusing a job_id for a different request is a 422, and the first job stays as it was."""
    accepted(post(client, JOBS, {**REQUEST, "job_id": "mine"}), "mine", replayed=False)
    before = conn.hgetall(keys.rq_job_key("mine"))
    refused_as_other_request(post(client, JOBS, {**REQUEST, **changed, "job_id": "mine"}), "mine")
    assert conn.hgetall(keys.rq_job_key("mine")) == before
    job = Job.fetch("mine", connection=conn)
    assert job.args == ("echo", REQUEST["payload"])
    assert queue_length(conn) == 1
    assert index_status(conn, "mine") is Status.QUEUED


def test_an_idempotency_key_names_the_job(client: FlaskClient, conn: redis.Redis) -> None:
    """An Idempotency-Key names the job idem-<sha256 of the key>; the same request again is a
    replay of it, another request a 422."""
    first = post(client, JOBS, REQUEST, headers=keyed(KEY))
    accepted(first, KEY_JOB_ID, replayed=False)
    assert Job.fetch(KEY_JOB_ID, connection=conn).args == ("echo", REQUEST["payload"])
    again = post(client, JOBS, reordered(REQUEST), headers=keyed(KEY))
    assert accepted(again, KEY_JOB_ID, replayed=True)["response"]["job_status"] == "queued"
    other = {**REQUEST, "payload": {"n": 2}}
    refused_as_other_request(post(client, JOBS, other, headers=keyed(KEY)), KEY_JOB_ID)
    assert queue_length(conn) == 1
    assert Job.fetch(KEY_JOB_ID, connection=conn).args == ("echo", REQUEST["payload"])


def test_different_keys_name_different_jobs(client: FlaskClient, conn: redis.Redis) -> None:
    """Two Idempotency-Keys, even differing only in case, are two jobs for the same request."""
    one = assert_envelope(post(client, JOBS, REQUEST, headers=keyed("abc")), 202)
    two = assert_envelope(post(client, JOBS, REQUEST, headers=keyed("ABC")), 202)
    assert one["job_id"] != two["job_id"]
    assert queue_length(conn) == 2


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "clé", "tab\there", "bell\x07", "del\x7f", "nul\x00"],
    # Plain ids: a node id holding escapes or brackets cannot be named on pytest's command line.
    ids=["empty", "256", "non-ascii", "tab", "bell", "del", "nul"],
)
def test_a_malformed_idempotency_key_is_refused(
    client: FlaskClient, conn: redis.Redis, key: str
) -> None:
    """An Idempotency-Key that is not 1 to 255 printable ASCII characters is a 400, no job."""
    body = assert_envelope(post(client, JOBS, REQUEST, headers=keyed(key)), 400)
    assert body["message"].startswith("Idempotency-Key must be"), body["message"]
    assert queue_length(conn) == 0


@pytest.mark.parametrize(
    "key",
    ["k" * 255, " ", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"],
    ids=["255", "space", "punctuation"],
)
def test_an_idempotency_key_of_any_printable_ascii_is_accepted(
    client: FlaskClient, key: str
) -> None:
    """An Idempotency-Key of up to 255 printable ASCII characters names its job."""
    expected = "idem-" + hashlib.sha256(key.encode()).hexdigest()
    accepted(post(client, JOBS, REQUEST, headers=keyed(key)), expected, replayed=False)


@pytest.mark.parametrize(
    ("job_id", "named"),
    [
        ("a.b", "1 to 128 characters"),
        ("x" * 129, "1 to 128 characters"),
        ("", "1 to 128 characters"),
        ("has space", "1 to 128 characters"),
        pytest.param("ünïcode", "1 to 128 characters", id="non-ascii"),
        ("a:b", "1 to 128 characters"),
        (42, "a number"),
        (None, "null"),
        (["a"], "an array"),
        (True, "a boolean"),
    ],
)
def test_a_malformed_job_id_is_refused(
    client: FlaskClient, conn: redis.Redis, job_id: Any, named: str
) -> None:
    """A job_id outside RQ's rule ([A-Za-z0-9_-], 1 to 128) or not a string is a 400, no job."""
    body = assert_envelope(post(client, JOBS, {**REQUEST, "job_id": job_id}), 400)
    assert body["message"].startswith("job_id must"), body["message"]
    assert named in body["message"], body["message"]
    assert queue_length(conn) == 0


def test_a_job_id_of_128_characters_is_accepted(client: FlaskClient) -> None:
    """A job_id of exactly 128 allowed characters names its job."""
    name = "A-z_9" * 25 + "xyz"
    assert len(name) == 128
    accepted(post(client, JOBS, {**REQUEST, "job_id": name}), name, replayed=False)


def test_a_job_id_and_a_key_together_are_refused(client: FlaskClient, conn: redis.Redis) -> None:
    """A submission with both a job_id and an Idempotency-Key is a 400 and creates no job."""
    resp = post(client, JOBS, {**REQUEST, "job_id": "both"}, headers=keyed(KEY))
    body = assert_envelope(resp, 400)
    assert "job_id" in body["message"] and "Idempotency-Key" in body["message"]
    assert queue_length(conn) == 0
    assert not conn.exists(keys.rq_job_key("both"), keys.rq_job_key(KEY_JOB_ID))


@pytest.mark.parametrize("named_by", ["job_id", "key"])
def test_a_replay_after_the_run_answers_done_and_never_runs_again(
    client: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
    named_by: str,
) -> None:
    """Once the named job ran, the same request answers 202 "done" as a replay, and no worker
    runs it a second time."""
    if named_by == "job_id":
        body, headers, job_id = {**REQUEST, "job_id": "ran"}, AUTH, "ran"
    else:
        body, headers, job_id = REQUEST, keyed(KEY), KEY_JOB_ID
    accepted(post(client, JOBS, body, headers=headers), job_id, replayed=False)
    run_worker()
    ran = describe_job(client, job_id)
    assert ran["job_status"] == "done"
    replay = accepted(post(client, JOBS, body, headers=headers), job_id, replayed=True)
    assert replay["response"]["job_status"] == "done"
    assert queue_length(conn) == 0
    run_worker()
    after = describe_job(client, job_id)
    assert after == ran
    assert len(list(Job.fetch(job_id, connection=conn).results())) == 1


def test_concurrent_submissions_of_one_key_make_one_job(app: Flask, conn: redis.Redis) -> None:
    """Eight clients sending the same keyed request at once get 202s for one and the same job,
    which is created once and enqueued once."""
    count = 8
    barrier = threading.Barrier(count)
    answers: list[TestResponse] = []
    lock = threading.Lock()

    def send() -> None:
        client = app.test_client()
        barrier.wait(timeout=30)
        resp = post(client, JOBS, REQUEST, headers=keyed(KEY))
        with lock:
            answers.append(resp)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == count
    bodies = [assert_envelope(resp, 202) for resp in answers]
    assert {body["job_id"] for body in bodies} == {KEY_JOB_ID}
    replays = [resp.headers.get("Idempotent-Replayed") for resp in answers]
    assert replays.count("true") == count - 1, replays
    assert conn.lrange(keys.rq_queue_key("default"), 0, -1) == [KEY_JOB_ID.encode()]
    assert conn.hgetall(keys.transitions_key()) == {b"new:queued": b"1"}
    assert index_status(conn, KEY_JOB_ID) is Status.QUEUED


@pytest.mark.parametrize("appears", ["before the watch", "inside the transaction"])
def test_a_name_taken_during_the_submission_answers_as_a_replay(
    app: Flask, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, appears: str
) -> None:
    """When the same keyed request creates the job after this submission found none (before
    its WATCH, or between WATCH and EXEC), this one enqueues nothing and answers as a replay."""
    client = app.test_client()
    seen = jobs._seen
    gate = TrackedQueue._gate
    calls = {"seen": 0, "gate": 0}

    def first_look_finds_nothing(job_id: str, digest: str | None) -> Any:
        calls["seen"] += 1
        if calls["seen"] == 1:
            if appears == "before the watch":
                accepted(
                    post(app.test_client(), JOBS, REQUEST, headers=keyed(KEY)), KEY_JOB_ID, False
                )
            return None
        return seen(job_id, digest)

    def competitor_inside(self: TrackedQueue, *args: Any, **kwargs: Any) -> Any:
        calls["gate"] += 1
        if appears == "inside the transaction" and calls["gate"] == 1:
            # The competitor runs the whole submission, gate included, before this EXEC.
            accepted(post(app.test_client(), JOBS, REQUEST, headers=keyed(KEY)), KEY_JOB_ID, False)
        return gate(self, *args, **kwargs)

    monkeypatch.setattr(jobs, "_seen", first_look_finds_nothing)
    monkeypatch.setattr(TrackedQueue, "_gate", competitor_inside)
    resp = post(client, JOBS, REQUEST, headers=keyed(KEY))
    accepted(resp, KEY_JOB_ID, replayed=True)
    assert conn.lrange(keys.rq_queue_key("default"), 0, -1) == [KEY_JOB_ID.encode()]
    assert conn.hgetall(keys.transitions_key()) == {b"new:queued": b"1"}
    assert index_status(conn, KEY_JOB_ID) is Status.QUEUED


def test_rqs_own_unique_enqueue_refuses_a_duplicate_and_indexes_the_first(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """RQ's enqueue_job(job, unique=True) on a tracked queue records the job in the index, and
    a second job of that id raises DuplicateJobError and changes nothing."""
    task = tasks.get("echo")
    first = queue.create_task_job(task, {"n": 1}, job_id="rq-unique")
    queue.enqueue_job(first, unique=True)
    assert index_status(conn, "rq-unique") is Status.QUEUED
    before = conn.hgetall(keys.rq_job_key("rq-unique"))
    second = queue.create_task_job(task, {"n": 2}, job_id="rq-unique")
    with pytest.raises(DuplicateJobError):
        queue.enqueue_job(second, unique=True)
    assert conn.hgetall(keys.rq_job_key("rq-unique")) == before
    assert Job.fetch("rq-unique", connection=conn).args == ("echo", {"n": 1})
    assert queue_length(conn) == 1
    assert index_status(conn, "rq-unique") is Status.QUEUED
    assert conn.hgetall(keys.transitions_key()) == {b"new:queued": b"1"}


def test_rqs_own_enqueue_with_unique_goes_through_the_tracked_path(
    conn: redis.Redis, queue: TrackedQueue, run_worker: Callable[..., TrackingMixin]
) -> None:
    """RQ's queue.enqueue(..., job_id=..., unique=True) indexes the job, refuses a duplicate,
    and the job then runs as any other."""
    queue.enqueue(tasks.RUNNER, "echo", {"n": 1}, job_id="rq-enqueue", unique=True)
    assert index_status(conn, "rq-enqueue") is Status.QUEUED
    with pytest.raises(DuplicateJobError):
        queue.enqueue(tasks.RUNNER, "echo", {"n": 2}, job_id="rq-enqueue", unique=True)
    assert queue_length(conn) == 1
    run_worker()
    job = Job.fetch("rq-enqueue", connection=conn)
    assert job.return_value() == {"n": 1}
    assert index_status(conn, "rq-enqueue") is Status.DONE


def test_a_named_job_refused_for_a_full_queue_leaves_no_name_behind(
    make_app: Callable[..., Flask],
    conn: redis.Redis,
    run_worker: Callable[..., TrackingMixin],
) -> None:
    """A named submission refused with 429 leaves no job under its name: once the queue has
    drained, the same submission creates it afresh (not a replay)."""
    client = make_app(max_queue_length=1).test_client()
    submit(client)
    resp = post(client, JOBS, REQUEST, headers=keyed(KEY))
    body = assert_envelope(resp, 429)
    assert "MAX_QUEUE_LENGTH" in body["message"]
    assert not conn.exists(keys.rq_job_key(KEY_JOB_ID))
    assert index_status(conn, KEY_JOB_ID) is None
    run_worker()
    again = accepted(post(client, JOBS, REQUEST, headers=keyed(KEY)), KEY_JOB_ID, replayed=False)
    assert again["response"]["job_status"] == "queued"
    assert index_status(conn, KEY_JOB_ID) is Status.QUEUED


def test_an_omitted_payload_is_the_same_request_as_an_empty_one(client: FlaskClient) -> None:
    """A named submission without `payload` and one with `"payload": {}` ask for the same job:
    the second is a replay, not a 422."""
    request = {"task": "echo", "id": "c-2"}
    first = assert_envelope(post(client, JOBS, request, headers=keyed("k-empty")), 202)
    again = post(client, JOBS, {**request, "payload": {}}, headers=keyed("k-empty"))
    accepted(again, first["job_id"], replayed=True)


# The canonical form of a keyed request's fingerprint, written out: the fields that make a
# request (absent ones null, payload {} when omitted), keys sorted at every level, no spaces,
# non-ASCII characters as themselves in UTF-8.
CANONICAL = (
    '{"id":"c-9","job_id":null,"payload":{"a":"zoë","b":[1,{"c":3,"d":2}]},'
    '"task":"echo","webhook_url":null}'
)


def test_a_named_job_keeps_the_digest_of_its_canonical_request(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """A named job stores the SHA-256 of its request's canonical JSON (sorted keys, no spaces,
    UTF-8): stored with the job for its retention, it must not change from one release to the
    next, or a replay across an upgrade would be refused as a different request."""
    request = {"task": "echo", "payload": {"b": [1, {"d": 2, "c": 3}], "a": "zoë"}, "id": "c-9"}
    job_id = "idem-" + hashlib.sha256(b"k-canon").hexdigest()
    accepted(post(client, JOBS, request, headers=keyed("k-canon")), job_id, replayed=False)
    stored = Job.fetch(job_id, connection=conn).meta["request_sha256"]
    assert stored == hashlib.sha256(CANONICAL.encode()).hexdigest()


def test_a_lone_surrogate_in_a_named_request_is_answered_as_in_an_unnamed_one(
    client: FlaskClient,
) -> None:
    """A payload holding a lone surrogate escape (valid JSON, "\\ud800") gets the same answer
    named by an Idempotency-Key as unnamed, never a 500."""
    raw = b'{"task": "echo", "payload": {"text": "\\ud800"}}'
    headers = {**AUTH, "Content-Type": "application/json"}
    unnamed = client.post(JOBS, data=raw, headers=headers)
    named = client.post(JOBS, data=raw, headers={**headers, "Idempotency-Key": "k-surrogate"})
    assert named.status_code != 500, named.get_data(as_text=True)
    assert named.status_code == unnamed.status_code, named.get_data(as_text=True)
