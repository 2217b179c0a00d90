"""Pure tests of webhook deliveries: the policy's backoff, its meta, the delivery job it saves,
the state the status shows, the Standard Webhooks signature, and the WEBHOOK_* settings."""

from __future__ import annotations

import base64
import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import fakeredis
import pytest
import redis
from rq.job import Job, JobStatus
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared import keys
from shared.delivery import (
    DELIVER,
    MAX_BACKOFF_SECONDS,
    WebhookPolicy,
    iso,
    new_delivery,
    parse_state,
    read_state,
)
from shared.exceptions import ConfigError
from shared.job import TrackedJob
from shared.settings import Settings
from tests.helpers import WEBHOOK_SECRET, index_view
from worker.webhooks import signed_headers

URL = "https://93.184.216.34/hook"


def policy(max_attempts: int = 8, backoff_seconds: int = 5) -> WebhookPolicy:
    """Return a policy with the given tries and backoff."""
    return WebhookPolicy(
        url=URL,
        max_attempts=max_attempts,
        backoff_seconds=backoff_seconds,
        timeout_seconds=10.0,
        retention_seconds=3600,
    )


# --- backoff ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_attempts", "backoff"), [(1, 5), (2, 1), (8, 5), (8, 1), (12, 7), (20, 600), (50, 3600)]
)
def test_intervals_lie_within_equal_jitter(max_attempts: int, backoff: int) -> None:
    """Interval n is the pause, drawn in [full/2, full] for full = backoff*2^(n-1) capped at
    3600 and rounded up, plus the second RQ's scheduler rounds off; one fewer than attempts."""
    full = [min(backoff * 2**n, MAX_BACKOFF_SECONDS) for n in range(max_attempts - 1)]
    for seed in range(200):
        pauses = policy(max_attempts, backoff).intervals(random.Random(seed))
        assert len(pauses) == max_attempts - 1
        for pause, whole in zip(pauses, full, strict=True):
            assert isinstance(pause, int)
            assert math.ceil(whole / 2) + 1 <= pause <= math.ceil(whole) + 1, (pauses, full)
            assert 2 <= pause <= MAX_BACKOFF_SECONDS + 1


def test_intervals_double_up_to_the_cap() -> None:
    """The bounds double each try until the cap of an hour, where they stay."""
    pauses = policy(14, 5).intervals(random.Random(1))
    # Tries 2..11: 5 s doubling reaches 2560 s; from there each is capped at 3600 s (each
    # interval one second over its pause).
    assert pauses[0] <= 6
    assert 1281 <= pauses[9] <= 2561
    assert all(1801 <= pause <= 3601 for pause in pauses[10:])
    # Below the cap, each pause's lower bound is its predecessor's upper bound: they never shrink.
    assert pauses[:10] == sorted(pauses[:10])


def test_intervals_are_jittered_and_seeded() -> None:
    """The same seed gives the same pauses; different seeds spread over the range."""
    assert policy().intervals(random.Random(7)) == policy().intervals(random.Random(7))
    firsts = {policy(2, 100).intervals(random.Random(seed))[0] for seed in range(200)}
    assert min(firsts) <= 56
    assert max(firsts) >= 96
    assert len(firsts) > 20


def test_smallest_backoff_waits_at_least_its_pause() -> None:
    """A backoff of 1 s gives RQ an interval of 2 s: RQ's due time, rounded down to a second,
    still lies a full pause (at most 1 s) after the failed try, never 0 (a retry at once)."""
    for seed in range(100):
        assert policy(2, 1).intervals(random.Random(seed)) == [2]


# --- the policy in meta ----------------------------------------------------------------------


def test_policy_round_trips_through_meta(fake: fakeredis.FakeRedis) -> None:
    """A policy kept in a job's meta reads back equal."""
    kept = WebhookPolicy(URL, 3, 2, 0.5, 120)
    job = Job.create(print, connection=fake, meta={"webhook": kept.as_meta()})
    assert WebhookPolicy.of(job) == kept
    assert kept.as_meta() == {
        "url": URL,
        "max_attempts": 3,
        "backoff_seconds": 2,
        "timeout_seconds": 0.5,
        "retention_seconds": 120,
    }


@pytest.mark.parametrize("meta", [{}, {"task": "echo"}, {"webhook": None}, {"webhook": URL}])
def test_no_policy_without_a_webhook(fake: fakeredis.FakeRedis, meta: dict[str, object]) -> None:
    """A job whose meta holds no webhook dict has no policy."""
    assert WebhookPolicy.of(Job.create(print, connection=fake, meta=meta)) is None


def test_attempt_bound_covers_three_timeouts() -> None:
    """One try may take connect, send and read timeouts plus room: 3 x timeout + 10 s."""
    assert WebhookPolicy(URL, 1, 1, 0.5, 60).attempt_seconds == 12
    assert WebhookPolicy(URL, 1, 1, 10.0, 60).attempt_seconds == 40


# --- the delivery job ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rq_status", "ended"),
    [(JobStatus.FINISHED, "done"), (JobStatus.FAILED, "failed"), (JobStatus.STOPPED, "canceled")],
)
def test_new_delivery_saves_a_plain_rq_job(
    fake: fakeredis.FakeRedis, rq_status: JobStatus, ended: str
) -> None:
    """The delivery job names the deliver function with (job id, end), on "<origin>:webhooks",
    with RQ retries of max_attempts - 1 and one pause each."""
    kept = WebhookPolicy(URL, 4, 2, 1.0, 300)
    job = Job.create(print, connection=fake, origin="default", status=rq_status, id="j-1")
    with fake.pipeline() as pipe:
        sent = new_delivery(job, kept, pipe)
        pipe.execute()
    assert sent.job_id.startswith("webhook-")
    assert sent.queue_key == keys.rq_queue_key("default:webhooks")
    assert sent.job_key == Job.key_for(sent.job_id)
    assert sent.ttl == 300
    saved = Job.fetch(sent.job_id, connection=fake)
    assert saved.func_name == DELIVER
    assert list(saved.args) == ["j-1", ended]
    assert saved.origin == "default:webhooks"
    assert saved.get_status() == JobStatus.QUEUED
    assert saved.retries_left == 3
    assert saved.retry_intervals is not None and len(saved.retry_intervals) == 3
    assert saved.timeout == kept.attempt_seconds
    assert saved.meta == {"job_id": "j-1"}
    # Saved, not queued: the record script pushes it only if the end is new.
    assert fake.llen(sent.queue_key) == 0
    assert fake.sismember("rq:queues", sent.queue_key)


def test_single_attempt_has_no_retry(fake: fakeredis.FakeRedis) -> None:
    """With one attempt, the delivery job carries no RQ retry at all."""
    job = Job.create(print, connection=fake, origin="q", status=JobStatus.FINISHED)
    with fake.pipeline() as pipe:
        sent = new_delivery(job, WebhookPolicy(URL, 1, 5, 1.0, 60), pipe)
        pipe.execute()
    saved = Job.fetch(sent.job_id, connection=fake)
    assert not saved.retries_left
    assert not saved.retry_intervals


def test_delivery_ids_are_unique(fake: fakeredis.FakeRedis) -> None:
    """Each end gets a delivery of its own id (the webhook-id receivers deduplicate on)."""
    job = Job.create(print, connection=fake, origin="q", status=JobStatus.FAILED)
    with fake.pipeline() as pipe:
        ids = {new_delivery(job, policy(), pipe).job_id for _ in range(50)}
        pipe.execute()
    assert len(ids) == 50


# --- the delivery state ----------------------------------------------------------------------


def test_parse_state_of_a_retrying_delivery() -> None:
    """Numbers come back as ints, times as ISO 8601 UTC with milliseconds."""
    raw = {
        b"delivery": b"webhook-abc",
        b"state": b"retrying",
        b"attempts": b"2",
        b"last_status": b"503",
        b"last_error": b"HTTP 503: busy",
        b"next_attempt_at": b"1700000000.25",
    }
    assert parse_state(raw) == {
        "state": "retrying",
        "attempts": 2,
        "last_status": 503,
        "last_error": "HTTP 503: busy",
        "delivered_at": None,
        "next_attempt_at": "2023-11-14T22:13:20.250Z",
    }


def test_parse_state_of_a_pending_delivery() -> None:
    """A fresh state has its defaults: no status, no error, no times."""
    assert parse_state({b"delivery": b"webhook-x", b"state": b"pending", b"attempts": b"0"}) == {
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
        "next_attempt_at": None,
    }


def test_parse_state_treats_empty_fields_as_absent() -> None:
    """Empty fields (as a deleted value may read) are absent, not zero or an empty string."""
    raw = {b"state": b"delivered", b"last_status": b"", b"last_error": b"", b"delivered_at": b""}
    parsed = parse_state(raw)
    assert parsed["last_status"] is None
    assert parsed["last_error"] is None
    assert parsed["delivered_at"] is None
    assert parsed["attempts"] == 0


def test_iso_times() -> None:
    """Epoch seconds are written as the API writes times."""
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1614265330.999) == "2021-02-25T15:02:10.999Z"


@pytest.fixture
def far_timezone() -> Iterator[str]:
    """Run the test with the process's local time zone set to India's (UTC+05:30), then put
    the zone back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "Asia/Kolkata")
        time.tzset()
        try:
            yield "Asia/Kolkata"
        finally:
            patch.undo()
            time.tzset()


def test_iso_times_are_utc_whatever_the_local_zone(far_timezone: str) -> None:
    """Epoch seconds are written in UTC (the "Z" they end with) on a host whose local time
    zone is not UTC."""
    assert time.strftime("%z", time.localtime(0)) == "+0530"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1614265330.999) == "2021-02-25T15:02:10.999Z"


# --- the signature ---------------------------------------------------------------------------


def test_signature_verifies_with_the_standard_library() -> None:
    """Headers signed by the worker verify with the Standard Webhooks library."""
    body = b'{"code": 200, "job_id": "j-1", "message": "success"}'
    now = int(datetime.now(UTC).timestamp())
    headers = signed_headers(WEBHOOK_SECRET, "webhook-1", now, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "webhook-1"
    assert headers["webhook-timestamp"] == str(now)
    assert Webhook(WEBHOOK_SECRET).verify(body, headers) == {
        "code": 200,
        "job_id": "j-1",
        "message": "success",
    }


def test_signature_matches_the_spec_example() -> None:
    """The worker's signature equals the Standard Webhooks spec's own example."""
    headers = signed_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("part", ["body", "id", "timestamp", "secret"])
def test_tampered_signature_fails(part: str) -> None:
    """A changed body, id or timestamp, or another secret, fails verification."""
    body = b'{"code": 200}'
    now = int(datetime.now(UTC).timestamp())
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    headers = signed_headers(other if part == "secret" else WEBHOOK_SECRET, "webhook-1", now, body)
    if part == "body":
        body = b'{"code": 500}'
    elif part == "id":
        headers["webhook-id"] = "webhook-2"
    elif part == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRET).verify(body, headers)


# --- the WEBHOOK_* settings ------------------------------------------------------------------


def secret_of(key_bytes: int) -> str:
    """Return a whsec_ secret holding a key of `key_bytes` bytes."""
    return "whsec_" + base64.b64encode(bytes(range(key_bytes))).decode()


@pytest.mark.parametrize("key_bytes", [24, 32, 64])
def test_good_webhook_secret(key_bytes: int) -> None:
    """A whsec_ secret with a key of 24 to 64 bytes is taken as given."""
    secret = secret_of(key_bytes)
    assert Settings.from_env({"WEBHOOK_SECRET": secret}).webhook_secret == secret


def test_webhook_secret_unset() -> None:
    """Without WEBHOOK_SECRET there is none (and webhooks are refused at submission)."""
    assert Settings.from_env({}).webhook_secret is None
    assert Settings.from_env({"WEBHOOK_SECRET": ""}).webhook_secret is None


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
        ("whsek_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
        ("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8I!PZIo2LaLaSw", "base64"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "base64"),
        ("whsec_MfKQ9r8G KYqrTwjUPD8ILPZIo2LaLaSw", "base64"),
        (secret_of(16), "24 to 64 bytes"),
        (secret_of(23), "24 to 64 bytes"),
        (secret_of(65), "24 to 64 bytes"),
        ("whsec_", "24 to 64 bytes"),
    ],
)
def test_bad_webhook_secret(secret: str, says: str) -> None:
    """A malformed WEBHOOK_SECRET raises ConfigError naming the variable and why, never its
    value."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WEBHOOK_SECRET": secret})
    message = str(caught.value)
    assert message.startswith("WEBHOOK_SECRET is invalid")
    assert says in message
    key = secret.removeprefix("whsec_")
    assert secret not in message
    if key:
        assert key not in message
        assert key[:8] not in message


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("WEBHOOK_MAX_ATTEMPTS", "1", "webhook_max_attempts", 1),
        ("WEBHOOK_MAX_ATTEMPTS", "50", "webhook_max_attempts", 50),
        ("WEBHOOK_BACKOFF_SECONDS", "1", "webhook_backoff_seconds", 1),
        ("WEBHOOK_BACKOFF_SECONDS", "3600", "webhook_backoff_seconds", 3600),
        ("WEBHOOK_TIMEOUT_SECONDS", "0.1", "webhook_timeout_seconds", 0.1),
        ("WEBHOOK_TIMEOUT_SECONDS", "120", "webhook_timeout_seconds", 120.0),
        ("WEBHOOK_ALLOW_PRIVATE", "true", "webhook_allow_private", True),
        ("WEBHOOK_ALLOW_PRIVATE", "0", "webhook_allow_private", False),
    ],
)
def test_good_webhook_settings(name: str, value: str, attribute: str, expected: object) -> None:
    """Each WEBHOOK_* variable is cast, its bounds included."""
    assert getattr(Settings.from_env({name: value}), attribute) == expected


def test_webhook_defaults() -> None:
    """Unset, deliveries try 8 times, from 5 s apart, 10 s each, public targets only."""
    settings = Settings.from_env({})
    assert settings.webhook_max_attempts == 8
    assert settings.webhook_backoff_seconds == 5
    assert settings.webhook_timeout_seconds == 10.0
    assert settings.webhook_allow_private is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_MAX_ATTEMPTS", "0"),
        ("WEBHOOK_MAX_ATTEMPTS", "51"),
        ("WEBHOOK_MAX_ATTEMPTS", "two"),
        ("WEBHOOK_BACKOFF_SECONDS", "0"),
        ("WEBHOOK_BACKOFF_SECONDS", "1.5"),
        ("WEBHOOK_BACKOFF_SECONDS", "3601"),
        ("WEBHOOK_TIMEOUT_SECONDS", "0.05"),
        ("WEBHOOK_TIMEOUT_SECONDS", "121"),
        ("WEBHOOK_TIMEOUT_SECONDS", "nan"),
        ("WEBHOOK_ALLOW_PRIVATE", "sometimes"),
    ],
)
def test_bad_webhook_settings(name: str, value: str) -> None:
    """An out-of-range or malformed WEBHOOK_* value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(f"{name}=")


# --- the tries within the retention ----------------------------------------------------------


def test_webhook_tries_past_the_retention_are_refused() -> None:
    """WEBHOOK_SECRET set with tries that spread past JOB_RETENTION_SECONDS (the defaults' up to
    642 s against 60 s) raises ConfigError naming the three variables, never the secret."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"JOB_RETENTION_SECONDS": "60", "WEBHOOK_SECRET": WEBHOOK_SECRET})
    message = str(caught.value)
    for name in ("WEBHOOK_MAX_ATTEMPTS=8", "WEBHOOK_BACKOFF_SECONDS=5", "JOB_RETENTION_SECONDS=60"):
        assert name in message, message
    assert "642 s" in message
    assert WEBHOOK_SECRET not in message
    assert WEBHOOK_SECRET.removeprefix("whsec_")[:8] not in message


def test_the_same_retention_without_webhooks_is_accepted() -> None:
    """Without WEBHOOK_SECRET (no webhooks) the same short retention is accepted."""
    settings = Settings.from_env({"JOB_RETENTION_SECONDS": "60"})
    assert settings.retention_seconds == 60
    assert settings.webhook_secret is None
    assert settings.webhook_max_attempts == 8


@pytest.mark.parametrize("secret", [None, WEBHOOK_SECRET])
def test_the_defaults_are_accepted(secret: str | None) -> None:
    """The default tries fit the default retention, with or without a WEBHOOK_SECRET."""
    env = {"WEBHOOK_SECRET": secret} if secret else {}
    settings = Settings.from_env(env)
    assert settings.webhook_secret == secret
    assert settings.retention_seconds == 7 * 24 * 3600


@pytest.mark.parametrize(
    ("attempts", "backoff", "span"),
    [(8, 5, 642), (2, 60, 61), (3, 3600, 7202), (4, 1000, 1000 + 2000 + 3600 + 3)],
)
def test_the_tries_must_end_before_the_retention(attempts: int, backoff: int, span: int) -> None:
    """With a WEBHOOK_SECRET, the longest spread of the tries (each pause at most backoff x
    2^(n-1), capped at an hour, plus RQ's second) must be shorter than the retention: equal is
    refused, a second longer accepted."""
    env = {
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_MAX_ATTEMPTS": str(attempts),
        "WEBHOOK_BACKOFF_SECONDS": str(backoff),
    }
    with pytest.raises(ConfigError, match=f"up to {span} s"):
        Settings.from_env({**env, "JOB_RETENTION_SECONDS": str(span)})
    accepted = Settings.from_env({**env, "JOB_RETENTION_SECONDS": str(span + 1)})
    assert accepted.retention_seconds == span + 1


def test_a_single_try_fits_any_retention() -> None:
    """One try (no retries) spreads over nothing: the shortest retention is accepted."""
    env = {"WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_MAX_ATTEMPTS": "1"}
    assert Settings.from_env({**env, "JOB_RETENTION_SECONDS": "60"}).retention_seconds == 60


# --- a try lost with its work-horse ----------------------------------------------------------


def lost_try(conn: redis.Redis, state: str) -> TrackedJob:
    """Save a delivery of job "job-1" whose state hash says `state`; return it as a worker
    fetches it (the service's job class)."""
    delivery = Job.create(
        DELIVER, args=("job-1", "done"), connection=conn, id="webhook-1", origin="default:webhooks"
    )
    delivery.save()
    conn.hset(
        keys.delivery_state_key("job-1"),
        mapping={"delivery": "webhook-1", "state": state, "attempts": 1},
    )
    return TrackedJob.fetch("webhook-1", connection=conn)


@pytest.mark.parametrize(
    ("rq_status", "settled"),
    [
        (JobStatus.SCHEDULED, "retrying"),
        (JobStatus.QUEUED, "retrying"),
        (JobStatus.FAILED, "gave_up"),
    ],
)
def test_a_lost_try_is_settled_when_rq_moves_its_delivery(
    conn: redis.Redis, rq_status: JobStatus, settled: str
) -> None:
    """A try that never reported (state "delivering") is counted failed, and the state says
    retrying or gave_up, once RQ reschedules or fails its delivery (a dead worker, a timeout)."""
    delivery = lost_try(conn, "delivering")
    with conn.pipeline() as pipe:
        delivery.set_status(rq_status, pipeline=pipe)
        pipe.execute()
    state = read_state(conn, "job-1")
    assert state is not None
    assert state["state"] == settled
    assert "worker died" in state["last_error"]
    counted = {k.decode(): int(v) for k, v in conn.hgetall(keys.deliveries_key()).items()}
    assert counted == ({"failed": 1, "gave_up": 1} if settled == "gave_up" else {"failed": 1})
    assert conn.hget(delivery.key, "status") == rq_status.value.encode()


@pytest.mark.parametrize("reported", ["retrying", "gave_up", "delivered"])
def test_a_reported_try_is_left_as_it_said(conn: redis.Redis, reported: str) -> None:
    """A try that reported its outcome keeps it when RQ then moves its delivery: nothing is
    counted twice."""
    delivery = lost_try(conn, reported)
    delivery.set_status(JobStatus.FAILED)
    state = read_state(conn, "job-1")
    assert state is not None and state["state"] == reported
    assert conn.hgetall(keys.deliveries_key()) == {}


def test_a_lost_try_of_an_older_end_leaves_the_newer_state(conn: redis.Redis) -> None:
    """The state of a newer end (another delivery's) is not touched by an older delivery."""
    delivery = lost_try(conn, "delivering")
    conn.hset(keys.delivery_state_key("job-1"), "delivery", "webhook-2")
    delivery.set_status(JobStatus.FAILED)
    state = read_state(conn, "job-1")
    assert state is not None and state["state"] == "delivering"
    assert conn.hgetall(keys.deliveries_key()) == {}


def test_a_delivery_never_enters_the_index(conn: redis.Redis) -> None:
    """A delivery's own status changes leave the status index alone."""
    delivery = lost_try(conn, "delivering")
    delivery.set_status(JobStatus.STARTED)
    delivery.set_status(JobStatus.FINISHED)
    assert index_view(conn) == {}
