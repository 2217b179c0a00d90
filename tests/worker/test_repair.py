"""The drift repair pass against real Redis: every kind of drift, its bounds and its lease."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
from collections.abc import Callable

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry
from rq.utils import utcformat

from shared import keys
from shared.index import StatusIndex, parse_transitions
from shared.queue import TrackedQueue
from shared.redis import redis_time_micros
from shared.settings import Settings
from shared.status import Status
from shared.tasks import RUNNER
from tests.helpers import index_view, indexed, record, rq_view
from worker import repair
from worker.main import TrackingMixin


def status_of(conn: redis.Redis, job_id: str) -> Status | None:
    """Return the job's index status, or None when it is not indexed."""
    found = indexed(conn, job_id)
    return None if found is None else found[0]


def test_a_job_rq_no_longer_has_leaves_the_index(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue
) -> None:
    """An entry whose job hash is gone is removed, whatever its status; others stay."""
    gone = queue.enqueue(RUNNER, "echo", {})
    kept = queue.enqueue(RUNNER, "echo", {})
    record(index, "never-in-rq", JobStatus.FINISHED)
    conn.delete(gone.key, keys.rq_job_key("never-in-rq"))
    report = repair.repair_pass(index)
    assert report.counts == {"removed": 2, "moved": 0, "added": 0}
    assert status_of(conn, gone.id) is None
    assert status_of(conn, "never-in-rq") is None
    assert status_of(conn, kept.id) is Status.QUEUED


@pytest.mark.parametrize(
    ("rq_status", "expected"),
    [
        (JobStatus.CANCELED, Status.CANCELED),
        (JobStatus.STOPPED, Status.CANCELED),
        (JobStatus.STARTED, Status.RUNNING),
        (JobStatus.FINISHED, Status.DONE),
        (JobStatus.FAILED, Status.FAILED),
        (JobStatus.SCHEDULED, Status.QUEUED),
        (JobStatus.DEFERRED, Status.QUEUED),
    ],
)
def test_a_job_whose_rq_status_differs_moves_and_counts(
    conn: redis.Redis,
    index: StatusIndex,
    queue: TrackedQueue,
    rq_status: JobStatus,
    expected: Status,
) -> None:
    """A status written behind the index's back moves the entry, scored now, counted once."""
    job = queue.enqueue(RUNNER, "echo", {})
    record(index, job.id, JobStatus.QUEUED)
    if expected is Status.QUEUED:
        # Start from another status, so that the repair has something to move.
        record(index, job.id, JobStatus.FAILED)
    conn.hset(job.key, "status", rq_status.value)
    before = redis_time_micros(conn)
    report = repair.repair_pass(index)
    assert report.counts["moved"] == 1
    found = indexed(conn, job.id)
    assert found is not None and found[0] is expected
    assert found[1] >= before
    counts = parse_transitions(conn.hgetall(keys.transitions_key()))
    source = "failed" if expected is Status.QUEUED else "queued"
    assert counts[(source, expected.value)] == 1
    assert repair.repair_pass(index).changed == 0


def test_a_plain_enqueue_is_added_from_the_queue_list(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """A job RQ's plain classes enqueued (unknown to the index) is added as queued."""
    job = Queue("default", connection=conn).enqueue(RUNNER, "echo", {})
    assert status_of(conn, job.id) is None
    report = repair.repair_pass(index)
    assert report.counts == {"removed": 0, "moved": 0, "added": 1}
    assert status_of(conn, job.id) is Status.QUEUED
    counts = parse_transitions(conn.hgetall(keys.transitions_key()))
    assert counts == {("new", "queued"): 1}


def test_jobs_found_in_every_registry_are_added(
    conn: redis.Redis, index: StatusIndex, run_worker: Callable[..., TrackingMixin]
) -> None:
    """Jobs that only RQ's plain classes touched are found in its registries, with RQ's status."""
    plain = Queue("default", connection=conn)
    done = plain.enqueue(RUNNER, "echo", {})
    failed = plain.enqueue(RUNNER, "fail", {"message": "x"})
    run_worker()
    for job_id in (done.id, failed.id):
        conn.zrem(keys.status_index_key(Status.DONE), job_id)
        conn.zrem(keys.status_index_key(Status.FAILED), job_id)
    scheduled = plain.enqueue_in(dt.timedelta(hours=1), RUNNER, "echo", {})
    started = plain.enqueue(RUNNER, "echo", {})
    plain.remove(started.id)
    started.set_status(JobStatus.STARTED)
    conn.zadd(f"rq:wip:{plain.name}", {f"{started.id}:execution-1": 1})
    canceled = plain.enqueue(RUNNER, "echo", {})
    canceled.cancel()
    repair.repair_pass(index)
    assert status_of(conn, done.id) is Status.DONE
    assert status_of(conn, failed.id) is Status.FAILED
    assert status_of(conn, scheduled.id) is Status.QUEUED
    assert status_of(conn, started.id) is Status.RUNNING
    assert status_of(conn, canceled.id) is Status.CANCELED


def test_a_final_job_older_than_the_retention_is_not_added_back(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """A finished job whose latest timestamp is past the retention stays out of the index."""
    index = StatusIndex(conn, 3600)
    old, recent = (Queue("default", connection=conn).enqueue(RUNNER, "echo", {}) for _ in "ab")
    long_ago = utcformat(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    for job in (old, recent):
        conn.lrem(queue.key, 0, job.id)
        FinishedJobRegistry("default", connection=conn).add(job, -1)
        conn.hset(job.key, "status", JobStatus.FINISHED.value)
    conn.hset(old.key, mapping={"created_at": long_ago, "enqueued_at": long_ago})
    conn.hset(old.key, mapping={"ended_at": long_ago})
    repair.repair_pass(index)
    assert status_of(conn, old.id) is None
    assert status_of(conn, recent.id) is Status.DONE


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("1970-01-01T00:00:00.000000Z", 0),
        ("2000-02-29T12:34:56.5Z", 951827696),
        ("2026-11-30T07:45:00.123456Z", 1796024700),
        ("2024-12-31T23:59:59Z", 1735689599),
        ("2100-03-01T00:00:00Z", 4107542400),
    ],
)
def test_lua_reads_rq_timestamps_as_python_does(
    conn: redis.Redis, stamp: str, expected: int
) -> None:
    """The script's date arithmetic agrees with Python's for RQ's timestamp format."""
    assert int(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()) == expected
    script = repair.REPAIR_LUA.split("local function recent")[0]
    probe = script + "\nreturn epoch_seconds(ARGV[7])"
    keys_ = [*keys.status_index_keys(), keys.transitions_key(), "unused"]
    got = conn.eval(probe, len(keys_), *keys_, "rq:job:", 60, "0", 1, "index", 1, stamp)
    assert got == expected


def test_non_final_entries_are_never_trimmed_while_rq_holds_them(
    conn: redis.Redis, queue: TrackedQueue
) -> None:
    """A scheduled job older than the retention stays queued; an old done entry is trimmed."""
    index = StatusIndex(conn, 60)
    waiting = queue.enqueue_in(dt.timedelta(days=30), RUNNER, "echo", {})
    conn.zadd(keys.status_index_key(Status.QUEUED), {waiting.id: 1})
    # RQ still keeps the finished job (result_ttl -1); the index keeps it for the retention only.
    done = queue.enqueue_task("echo", {})
    conn.lrem(queue.key, 0, done.id)
    record(index, done.id, JobStatus.FINISHED)
    conn.zadd(keys.status_index_key(Status.DONE), {done.id: 1})
    report = repair.repair_pass(index)
    assert report.trimmed == 1
    assert conn.zscore(keys.status_index_key(Status.QUEUED), waiting.id) == 1
    assert status_of(conn, done.id) is None
    assert conn.exists(done.key)


def test_each_call_is_bounded_by_the_batch(conn: redis.Redis, index: StatusIndex) -> None:
    """A pass over N index entries makes about N / batch calls of at most `batch` ids each."""
    queued = keys.status_index_key(Status.QUEUED)
    conn.zadd(queued, {f"ghost-{n}": n for n in range(1000)})
    report = repair.repair_pass(index, batch=100)
    assert report.counts["removed"] == 1000
    assert report.checked >= 1000
    # Five index sets at least once each; the large one in about ten steps (ZSCAN's COUNT is a
    # hint, so allow some slack), and no queue or registry exists yet.
    assert 5 + 9 <= report.calls <= 5 + 20


def test_the_pass_counts_repairs_in_redis(conn: redis.Redis, index: StatusIndex) -> None:
    """Each pass adds what it removed, moved and added to the repairs hash."""
    record(index, "ghost", JobStatus.QUEUED)
    conn.delete(keys.rq_job_key("ghost"))
    repair.repair_pass(index)
    repair.repair_pass(index)
    assert conn.hgetall(keys.repairs_key()) == {b"removed": b"1"}
    Queue("default", connection=conn).enqueue(RUNNER, "echo", {})
    repair.repair_pass(index)
    assert conn.hgetall(keys.repairs_key()) == {b"removed": b"1", b"added": b"1"}


def test_the_lease_lets_one_pass_start_per_interval(conn: redis.Redis, index: StatusIndex) -> None:
    """Two repairers due at once: one runs a pass, the other waits for the lease to expire."""
    assert repair.repair_when_due(index, 30, "worker-a") is not None
    assert repair.repair_when_due(index, 30, "worker-b") is None
    assert conn.get(keys.repair_lease_key()) == b"worker-a"
    assert 28 <= conn.ttl(keys.repair_lease_key()) <= 30
    conn.delete(keys.repair_lease_key())
    assert repair.repair_when_due(index, 30, "worker-b") is not None


def test_a_job_without_a_status_is_left_alone(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue
) -> None:
    """A job RQ holds without a status field (RQ reads it as "created") keeps its entry."""
    job = queue.enqueue_task("echo", {})
    conn.hdel(job.key, "status")
    assert repair.repair_pass(index).changed == 0
    assert status_of(conn, job.id) is Status.QUEUED


def test_a_stub_without_data_leaves_the_index(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue
) -> None:
    """A hash RQ cannot read as a job (a late status or meta write after a deletion) is gone."""
    job = queue.enqueue_task("echo", {})
    conn.delete(job.key)
    conn.hset(job.key, mapping={"status": "finished", "meta": "{}"})
    report = repair.repair_pass(index)
    assert report.counts["removed"] == 1
    assert status_of(conn, job.id) is None


def test_a_second_entry_in_another_set_is_removed(
    conn: redis.Redis, index: StatusIndex, queue: TrackedQueue
) -> None:
    """A job listed in two sets keeps only the entry of the status RQ gives it."""
    job = queue.enqueue_task("echo", {})
    conn.zadd(keys.status_index_key(Status.FAILED), {job.id: 1})
    report = repair.repair_pass(index)
    assert report.counts == {"removed": 1, "moved": 0, "added": 0}
    assert index_view(conn) == rq_view(conn) == {job.id: Status.QUEUED}
    assert conn.zscore(keys.status_index_key(Status.FAILED), job.id) is None


def test_a_queue_read_from_its_tail_misses_nothing_a_worker_pops(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """Jobs popped at the head between two steps never make the pass skip a waiting job."""
    plain = Queue("default", connection=conn)
    jobs = [plain.enqueue(RUNNER, "echo", {"n": n}) for n in range(6)]
    script_keys = [
        *keys.status_index_keys(),
        keys.transitions_key(),
        keys.repairs_key(),
        plain.key,
        keys.clock_key(),
    ]

    def step(cursor: str) -> str:
        reply = conn.eval(
            repair.REPAIR_LUA, len(script_keys), *script_keys, "rq:job:", 60, cursor, 2, "list", 1
        )
        return str(reply[0].decode())

    cursor = step("0")
    # A worker takes the two oldest jobs (as BLMOVE/LPOP do) between two steps of the pass.
    conn.lpop(plain.key, 2)
    while cursor != "0":
        cursor = step(cursor)
    assert set(index_view(conn)) == {job.id for job in jobs[2:]}


def test_a_pass_stops_when_its_lease_goes_to_another_worker(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, index: StatusIndex
) -> None:
    """Asked about once a second, a lost lease stops the pass where it is."""
    clock = iter(float(n) for n in range(1000))
    monkeypatch.setattr(repair.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(repair.time, "sleep", lambda seconds: None)
    asked: list[int] = []

    def still_ours() -> bool:
        asked.append(1)
        return len(asked) < 3

    report = repair.repair_pass(index, still_ours=still_ours)
    assert not report.complete
    assert len(asked) == 3
    assert report.calls == 3


def test_the_lease_is_renewed_only_by_its_owner(conn: redis.Redis) -> None:
    """The renewal keeps the owner's lease for the grace, and never touches someone else's."""
    lease = keys.repair_lease_key()
    renew = conn.register_script(repair.RENEW_LUA)
    conn.set(lease, "a", ex=2)
    assert renew(keys=[lease], args=["a", 10]) == 1
    assert 9 <= conn.ttl(lease) <= 10
    conn.expire(lease, 30)
    assert renew(keys=[lease], args=["a", 10]) == 1
    assert conn.ttl(lease) > 10
    assert renew(keys=[lease], args=["b", 10]) == 0
    assert conn.get(lease) == b"a"
    conn.delete(lease)
    assert renew(keys=[lease], args=["a", 10]) == 0
    assert conn.get(lease) is None


def test_plain_job_classes_are_untouched_by_the_repair(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """The repair reads RQ, never writes it: RQ's job hash is byte for byte the same after."""
    job = Job.create(RUNNER, args=("echo", {}), connection=conn)
    job.save()
    Queue("default", connection=conn).enqueue_job(job)
    before = conn.hgetall(job.key)
    repair.repair_pass(index)
    assert conn.hgetall(job.key) == before


def test_the_report_counts_ids_and_time(conn: redis.Redis, index: StatusIndex) -> None:
    """A pass reports each id it read once per source, and its wall and busy time."""
    queue = TrackedQueue("default", connection=conn)
    for _ in range(3):
        queue.enqueue_task("echo", {})
    report = repair.repair_pass(index, duty=1.0)
    # Three queued entries, then the same three in RQ's queue list.
    assert report.checked == 6
    assert report.changed == 0
    assert 0 < report.longest_call_seconds <= report.busy_seconds <= report.seconds < 5
    # The five index sets, then the queue and its six registries: one call each.
    assert report.calls == 5 + 1 + 6


@pytest.mark.parametrize("duty", [0.5, 2 / 3, 0.25])
def test_a_pass_rests_so_redis_is_busy_at_most_its_duty(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, index: StatusIndex, duty: float
) -> None:
    """After each call the pass sleeps in proportion, so calls fill `duty` of its time."""
    slept: list[float] = []
    monkeypatch.setattr(repair.time, "sleep", slept.append)
    report = repair.repair_pass(index, duty=duty)
    assert len(slept) == report.calls
    assert sum(slept) == pytest.approx(report.busy_seconds * (1 - duty) / duty)


def test_an_unpaced_pass_never_sleeps(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, index: StatusIndex
) -> None:
    """At a duty of 1 the pass makes its calls back to back."""
    slept: list[float] = []
    monkeypatch.setattr(repair.time, "sleep", slept.append)
    repair.repair_pass(index, duty=1.0)
    assert slept == []


def test_an_unknown_source_kind_is_an_error(conn: redis.Redis) -> None:
    """The script refuses a source it does not know how to read, instead of guessing."""
    keys_ = [*keys.status_index_keys(), keys.transitions_key(), "some-key"]
    with pytest.raises(redis.ResponseError, match="unknown source kind zset"):
        conn.eval(repair.REPAIR_LUA, len(keys_), *keys_, "rq:job:", 60, "0", 10, "zset", 1)


def test_a_pass_that_changed_something_logs_at_info(
    caplog: pytest.LogCaptureFixture, conn: redis.Redis, index: StatusIndex
) -> None:
    """A pass with repairs logs one INFO line with its counts; a clean one logs at DEBUG."""
    record(index, "ghost", JobStatus.QUEUED)
    conn.delete(keys.rq_job_key("ghost"))
    with caplog.at_level(logging.DEBUG, logger="worker.repair"):
        repair.repair_when_due(index, 30, "a")
        conn.delete(keys.repair_lease_key())
        repair.repair_when_due(index, 30, "a")
    lines = [r for r in caplog.records if r.name == "worker.repair"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.DEBUG]
    message = lines[0].getMessage()
    assert re.fullmatch(
        r"repair pass: 1 ids checked, 1 removed, 0 moved, 0 added, 0 trimmed in \d+\.\d\ds",
        message,
    ), message
    extra = lines[0].repair  # type: ignore[attr-defined]
    assert extra["removed"] == 1 and extra["checked"] == 1 and extra["s"] >= 0
    assert set(extra) == {"removed", "moved", "added", "checked", "s"}


def test_run_forever_repairs_until_its_parent_goes(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, settings: Settings
) -> None:
    """The child's loop runs passes under the lease while its parent lives, then returns."""
    parents = iter([100, 100, 1])
    monkeypatch.setattr(repair.os, "getppid", lambda: next(parents))
    naps: list[float] = []
    monkeypatch.setattr(repair.time, "sleep", naps.append)
    configured: list[tuple[str, str]] = []
    monkeypatch.setattr(repair, "configure_logging", lambda *args: configured.append(args))
    handlers: list[tuple[int, object]] = []
    monkeypatch.setattr(repair.signal, "signal", lambda sig, h: handlers.append((sig, h)))
    record(StatusIndex(conn, 60), "ghost", JobStatus.QUEUED)
    conn.delete(keys.rq_job_key("ghost"))
    repair.run_forever(settings, 100)
    assert handlers == [(signal.SIGINT, signal.SIG_IGN)]
    assert configured == [(settings.log_level, settings.log_format)]
    assert indexed(conn, "ghost") is None
    owner = conn.get(keys.repair_lease_key())
    assert owner is not None
    assert re.fullmatch(
        rf"{re.escape(os.uname().nodename)}:{os.getpid()}:[0-9a-f]{{8}}", owner.decode()
    )
    assert 0 < conn.ttl(keys.repair_lease_key()) <= settings.repair_interval
    # Two loops ran (the parent was alive twice): each rests LEASE_POLL.
    assert naps.count(repair.LEASE_POLL) == 2


def test_run_forever_survives_any_failed_pass(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings: Settings,
) -> None:
    """A pass cut short by Redis logs a warning, any other failure its traceback; it goes on."""
    parents = iter([100, 100, 1])
    monkeypatch.setattr(repair.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(repair.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(repair, "configure_logging", lambda level, fmt: None)
    monkeypatch.setattr(repair.signal, "signal", lambda sig, h: None)
    failures: list[Exception] = [redis.ConnectionError("gone"), KeyError("surprise")]

    def broken(index: StatusIndex, interval: int, owner: str) -> None:
        raise failures.pop(0)

    monkeypatch.setattr(repair, "repair_when_due", broken)
    with caplog.at_level(logging.WARNING, logger="worker.repair"):
        repair.run_forever(settings, 100)
    assert failures == []
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "worker.repair"]
    assert logged == [
        (logging.WARNING, "repair pass interrupted, Redis unreachable or full: gone"),
        (logging.ERROR, "repair pass failed"),
    ]
    assert caplog.records[-1].exc_info is not None


def test_run_forever_ends_when_its_parent_is_already_gone(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """A child whose parent died before its loop began ends at once, running no pass."""
    monkeypatch.setattr(repair.os, "getppid", lambda: 1)
    monkeypatch.setattr(repair, "configure_logging", lambda level, fmt: None)
    monkeypatch.setattr(repair.signal, "signal", lambda sig, h: None)
    ran: list[str] = []
    monkeypatch.setattr(repair, "repair_when_due", lambda *args: ran.append("pass"))
    repair.run_forever(settings, 4242)
    assert ran == []


class SteppingClock:
    """Stands in for time.perf_counter: each reading is `step` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        """Advance and return the time."""
        self.now += self.step
        return self.now


def test_a_long_pass_keeps_its_lease(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, index: StatusIndex
) -> None:
    """A pass whose calls outlast the lease renews it for the grace, and finishes."""
    monkeypatch.setattr(repair.time, "perf_counter", SteppingClock(0.6))
    monkeypatch.setattr(repair.time, "sleep", lambda seconds: None)
    lease = keys.repair_lease_key()
    # A 5 s lease: the renewals during the pass (12 calls of 1.2 s each) keep it at the grace.
    report = repair.repair_when_due(index, 5, "me")
    assert report is not None and report.complete
    assert conn.get(lease) == b"me"
    assert repair.LEASE_GRACE - 1 <= conn.ttl(lease) <= repair.LEASE_GRACE


def test_a_pass_whose_lease_was_taken_stops_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    conn: redis.Redis,
    index: StatusIndex,
) -> None:
    """When another worker holds the lease at a renewal, the pass stops, logged as a warning."""
    monkeypatch.setattr(repair.time, "perf_counter", SteppingClock(0.6))
    monkeypatch.setattr(
        repair.time, "sleep", lambda seconds: conn.set(keys.repair_lease_key(), "thief")
    )
    with caplog.at_level(logging.WARNING, logger="worker.repair"):
        report = repair.repair_when_due(index, 30, "me")
    assert report is not None and report.complete is False
    assert conn.get(keys.repair_lease_key()) == b"thief"
    assert [r.getMessage() for r in caplog.records if r.name == "worker.repair"] == [
        "repair pass stopped: its lease went to another worker"
    ]


@pytest.mark.parametrize(("step", "calls"), [(0.5, 1), (0.25, 2), (0.1, 4)])
def test_the_lease_is_asked_about_once_a_second(
    monkeypatch: pytest.MonkeyPatch, index: StatusIndex, step: float, calls: int
) -> None:
    """still_ours is asked only when a full second has passed since the last time."""
    clock = SteppingClock(step)
    monkeypatch.setattr(repair.time, "perf_counter", clock)
    monkeypatch.setattr(repair.time, "sleep", lambda seconds: None)
    asked: list[float] = []

    def still_ours() -> bool:
        asked.append(clock.now)
        return False

    report = repair.repair_pass(index, still_ours=still_ours)
    # Each call reads the clock twice, then once to see if a second has passed: the first
    # question (and, answered False, the stop) comes after the call that crosses 1 s.
    assert len(asked) == 1
    assert report.complete is False
    assert report.calls == calls
    assert report.seconds == pytest.approx(asked[0] - step)
