"""The change feed on jobs/status (docs/changes-feed.md) through the app, on the session's real
Redis: legacy answers, filters, counts, pages and cursors, `since`, the GET form, and the
exactly-once guarantee of a client that follows cursors while jobs change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from rq.job import JobStatus

from api import feed
from shared import index as index_module
from shared.index import StatusIndex
from shared.job import TrackedJob
from shared.queue import TrackedQueue
from shared.redis import MICROS, redis_time_micros
from shared.status import Status
from tests.helpers import (
    API_KEY,
    AUTH,
    JOBS_STATUS,
    assert_envelope,
    index_view,
    indexed,
    post,
    record,
    submit,
)
from worker.main import TrackingMixin

# The fields of an answer that depend on when it was made, not on what it says.
TIMING = ("run_time", "queue_time", "total_time", "server_time")
RQ_STATUS = {
    Status.QUEUED: JobStatus.QUEUED,
    Status.RUNNING: JobStatus.STARTED,
    Status.DONE: JobStatus.FINISHED,
    Status.FAILED: JobStatus.FAILED,
    Status.CANCELED: JobStatus.CANCELED,
}
RQ_STATUS_NAME = {rq: api.value for api, rq in RQ_STATUS.items()}


def ask(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    """POST `fields` to jobs/status; assert a 200 envelope and return it."""
    return assert_envelope(post(client, JOBS_STATUS, fields), 200)


def ask_get(client: FlaskClient, **params: Any) -> dict[str, Any]:
    """GET jobs/status with `params` (a list repeats the parameter); assert a 200 envelope."""
    return assert_envelope(client.get(JOBS_STATUS, query_string=params, headers=AUTH), 200)


def refused(client: FlaskClient, **fields: Any) -> str:
    """POST `fields` to jobs/status; assert a 400 envelope and return its message."""
    body = assert_envelope(post(client, JOBS_STATUS, fields), 400)
    assert body["response"] is None
    message: str = body["message"]
    return message


def follow(client: FlaskClient, **first: Any) -> list[dict[str, Any]]:
    """Ask `first`, then follow each next_cursor (with first's limit) until it is null; return
    every answer."""
    pages = [ask(client, **first)]
    while (cursor := pages[-1]["next_cursor"]) is not None:
        assert len(pages) < 1_000, "the cursor never came to null"
        more = {"limit": first["limit"]} if "limit" in first else {}
        pages.append(ask(client, cursor=cursor, **more))
    return pages


def listed(pages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Return every (job id, status) the pages listed, in order, repeats included."""
    return [pair for page in pages for pair in page["response"].items()]


def position(conn: redis.Redis, job_id: str) -> int:
    """Return the position (µs) of the job's entry in the index."""
    entry = indexed(conn, job_id)
    assert entry is not None, job_id
    return entry[1]


def cancel(conn: redis.Redis, job_id: str) -> None:
    """Cancel the job as the service's own class does."""
    TrackedJob.fetch(job_id, connection=conn).cancel()


@pytest.fixture
def mixed(
    client: FlaskClient,
    conn: redis.Redis,
    index: StatusIndex,
    run_worker: Callable[..., TrackingMixin],
) -> dict[str, str]:
    """Return {job id: status} of jobs in every status: 3 done, 2 failed, 2 queued, 1 canceled,
    1 running (echo jobs but for the failed ones)."""
    expected: dict[str, str] = {}
    for n in range(3):
        expected[submit(client, "echo", {"n": n})] = "done"
    for _ in range(2):
        expected[submit(client, "fail", {"message": "on purpose"})] = "failed"
    run_worker()
    for _ in range(2):
        expected[submit(client, "echo")] = "queued"
    canceled = submit(client, "echo")
    cancel(conn, canceled)
    expected[canceled] = "canceled"
    running = submit(client, "echo")
    record(index, running, JobStatus.STARTED)
    expected[running] = "running"
    assert {k: v.value for k, v in index_view(conn).items()} == expected
    return expected


def of(expected: dict[str, str], *statuses: str) -> dict[str, str]:
    """Return the jobs of `expected` in one of `statuses`."""
    return {job_id: status for job_id, status in expected.items() if status in statuses}


# --- legacy answers ----------------------------------------------------------------------------


LEGACY = {
    "post-nothing": ("POST", {}),
    "post-since_seconds": ("POST", {"since_seconds": 60}),
    "get-nothing": ("GET", {}),
    "get-since_seconds": ("GET", {"since_seconds": "60"}),
}


@pytest.mark.parametrize(("method", "fields"), LEGACY.values(), ids=list(LEGACY))
def test_a_legacy_request_answers_the_whole_map_with_server_time_and_no_cursor(
    client: FlaskClient, conn: redis.Redis, mixed: dict[str, str], method: str, fields: Any
) -> None:
    """Only since_seconds, or nothing: `response` is the whole map as before, beside a
    server_time at or after every change listed, next_cursor null and no counts."""
    before = redis_time_micros(conn)
    body = ask(client, **fields) if method == "POST" else ask_get(client, **fields)
    after = redis_time_micros(conn)
    assert body["response"] == mixed
    assert body["next_cursor"] is None
    assert "counts" not in body
    server_time = body["server_time"]
    assert isinstance(server_time, float)
    assert before - 1 <= round(server_time * MICROS) <= after
    assert all(position(conn, job_id) <= round(server_time * MICROS) for job_id in mixed)


# --- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses",
    [["failed"], ["done", "canceled"], ["queued", "running"], list(Status)],
    ids=["failed", "done-canceled", "queued-running", "all-five"],
)
def test_a_status_filter_lists_those_statuses_only(
    client: FlaskClient, mixed: dict[str, str], statuses: list[str]
) -> None:
    """status lists only the jobs whose latest status is one of those asked, whole or in pages."""
    expected = of(mixed, *statuses)
    assert ask(client, status=statuses)["response"] == expected
    pages = follow(client, status=statuses, limit=1, since_seconds=600)
    assert listed(pages) == sorted(expected.items(), key=lambda pair: list(mixed).index(pair[0]))


def test_one_status_may_be_a_string(client: FlaskClient, mixed: dict[str, str]) -> None:
    """status "failed" lists what ["failed"] lists."""
    assert ask(client, status="failed")["response"] == of(mixed, "failed")


def test_a_queue_filter_leaves_out_the_jobs_of_other_queues(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """queue lists only the jobs of that RQ queue, whole or in pages; without it, all queues."""
    ours = [submit(client, "echo", {"n": n}) for n in range(3)]
    other = TrackedQueue("other", connection=conn).enqueue_task("echo", {}).id
    ours.append(submit(client, "echo"))
    assert set(ask(client)["response"]) == {*ours, other}
    assert list(ask(client, queue="default")["response"]) == ours
    assert ask(client, queue="other")["response"] == {other: "queued"}
    assert ask(client, queue="nowhere")["response"] == {}
    pages = follow(client, queue="default", limit=1, since_seconds=600)
    assert [job_id for job_id, _ in listed(pages)] == ours
    assert listed(follow(client, queue="other", limit=2, since_seconds=600)) == [(other, "queued")]


def test_a_task_filter_leaves_out_the_jobs_of_other_tasks(
    client: FlaskClient, run_worker: Callable[..., TrackingMixin]
) -> None:
    """task lists only the jobs of that task, whatever their status, whole or in pages."""
    echoes = [submit(client, "echo", {"n": n}) for n in range(3)]
    sleeps = [submit(client, "sleep", {"seconds": 0})]
    run_worker()
    echoes.append(submit(client, "echo"))
    sleeps.append(submit(client, "sleep", {"seconds": 0}))
    assert ask(client, task="sleep")["response"] == {sleeps[0]: "done", sleeps[1]: "queued"}
    assert set(ask(client, task="echo")["response"]) == set(echoes)
    assert ask(client, task="fail")["response"] == {}
    assert listed(follow(client, task="sleep", limit=1, since_seconds=600)) == [
        (sleeps[0], "done"),
        (sleeps[1], "queued"),
    ]
    assert sorted(job for job, _ in listed(follow(client, task="echo", limit=2))) == sorted(echoes)


def test_queue_task_and_status_filters_combine(
    client: FlaskClient, conn: redis.Redis, run_worker: Callable[..., TrackingMixin]
) -> None:
    """queue, task and status together list the jobs that are all three."""
    done_sleep = submit(client, "sleep", {"seconds": 0})
    submit(client, "echo")
    run_worker()
    queued_sleep = submit(client, "sleep", {"seconds": 0})
    TrackedQueue("other", connection=conn).enqueue_task("sleep", {"seconds": 0})
    query = {"queue": "default", "task": "sleep"}
    assert ask(client, **query)["response"] == {done_sleep: "done", queued_sleep: "queued"}
    assert ask(client, status="queued", **query)["response"] == {queued_sleep: "queued"}
    pages = follow(client, status="done", limit=1, since_seconds=600, **query)
    assert listed(pages) == [(done_sleep, "done")]


# --- counts --------------------------------------------------------------------------------------


def per_status(expected: dict[str, str], statuses: list[str]) -> dict[str, int]:
    """Return how many of `expected` are in each of `statuses`."""
    return {status: sum(s == status for s in expected.values()) for status in statuses}


def test_counts_count_the_window_per_status(client: FlaskClient, mixed: dict[str, str]) -> None:
    """counts is the number of jobs per status in the window, one entry per status asked (all
    five without status), whole or in pages."""
    everything = [status.value for status in Status]
    whole = ask(client, counts=True)
    assert whole["counts"] == per_status(mixed, everything)
    assert list(whole["counts"]) == everything
    assert whole["response"] == mixed
    asked = ["failed", "done"]
    assert ask(client, counts=True, status=asked)["counts"] == per_status(mixed, ["done", "failed"])
    assert ask(client, counts=False)["response"] == mixed
    assert "counts" not in ask(client, counts=False)


def test_counts_are_counted_without_listing(client: FlaskClient, mixed: dict[str, str]) -> None:
    """A page of one job with counts still counts every job of the window; so does every page
    that follows its cursor with counts."""
    everything = [status.value for status in Status]
    first = ask(client, counts=True, limit=1, since_seconds=600)
    assert len(first["response"]) == 1
    assert first["counts"] == per_status(mixed, everything)
    cursor = first["next_cursor"]
    while cursor is not None:
        page = ask(client, cursor=cursor, counts=True, limit=1)
        assert page["counts"] == per_status(mixed, everything)
        cursor = page["next_cursor"]
    answer = ask(client, counts=True, status=["queued"], limit=1, since_seconds=600)
    assert answer["counts"] == {"queued": 2}


def test_counts_follow_the_window(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """counts count only the changes inside the window: after `since`, not before."""
    record(index, "early", JobStatus.FINISHED)
    since = ask(client)["server_time"]
    record(index, "late-1", JobStatus.FINISHED)
    record(index, "late-2", JobStatus.FAILED)
    record(index, "early", JobStatus.FAILED)
    answer = ask(client, since=since, counts=True, status=["done", "failed"])
    assert answer["counts"] == {"done": 1, "failed": 2}
    assert answer["response"] == {"late-1": "done", "late-2": "failed", "early": "failed"}


# --- pages and cursors ---------------------------------------------------------------------------


def test_following_next_cursor_lists_every_job_once_then_null(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """Pages of `limit` list every job of the window exactly once, oldest change first, and the
    last next_cursor is null."""
    jobs = [f"job-{n:02d}" for n in range(23)]
    statuses = list(RQ_STATUS.values())
    for n, job_id in enumerate(jobs):
        record(index, job_id, statuses[n % len(statuses)])
    pages = follow(client, limit=5, since_seconds=600)
    assert [len(page["response"]) for page in pages] == [5, 5, 5, 5, 3]
    assert [job for job, _ in listed(pages)] == jobs
    assert dict(listed(pages)) == {k: v.value for k, v in index_view(conn).items()}
    assert pages[-1]["next_cursor"] is None
    assert all(page["next_cursor"] is not None for page in pages[:-1])


def test_a_page_that_ends_the_window_exactly_still_ends_in_null(
    client: FlaskClient, index: StatusIndex
) -> None:
    """When the jobs fill the last page exactly, following its cursor ends in null with no
    job listed twice."""
    jobs = [f"job-{n}" for n in range(10)]
    for job_id in jobs:
        record(index, job_id, JobStatus.QUEUED)
    pages = follow(client, limit=5, since_seconds=600)
    assert [job for job, _ in listed(pages)] == jobs
    assert pages[-1]["next_cursor"] is None


def test_a_limit_without_cursor_starts_pages_from_since_seconds(
    client: FlaskClient, index: StatusIndex
) -> None:
    """limit alone answers the first page of the window (600 s), not the whole window."""
    for n in range(4):
        record(index, f"job-{n}", JobStatus.QUEUED)
    first = ask(client, limit=3)
    assert list(first["response"]) == ["job-0", "job-1", "job-2"]
    assert first["next_cursor"] is not None
    assert ask(client, cursor=first["next_cursor"])["response"] == {"job-3": "queued"}


def test_a_cursor_may_repeat_its_filters_but_not_change_them(
    client: FlaskClient, mixed: dict[str, str]
) -> None:
    """With a cursor, the same status, queue and task are accepted; other ones are a 400."""
    first = ask(client, status=["done", "failed"], task="echo", limit=1, since_seconds=600)
    cursor = first["next_cursor"]
    assert cursor is not None
    same = ask(client, cursor=cursor, status=["failed", "done"], task="echo", limit=1)
    assert same["response"] == ask(client, cursor=cursor, limit=1)["response"]
    assert "status differs" in refused(client, cursor=cursor, status="done")
    assert "status differs" in refused(client, cursor=cursor, status=list(Status))
    assert "task differs" in refused(client, cursor=cursor, task="fail")
    assert "queue differs" in refused(client, cursor=cursor, queue="default")
    assert "counts cannot be combined" in refused(client, cursor=cursor, counts=True)
    assert "send no since" in refused(client, cursor=cursor, since_seconds=600)
    assert "send no since" in refused(client, cursor=cursor, since=first["server_time"])
    assert "not one this service gave out" in refused(client, cursor=cursor[:-4])


def in_position_order(conn: redis.Redis, page: dict[str, Any]) -> list[tuple[str, str]]:
    """Assert the page's jobs come in the order of their positions, none after its server_time
    (read right after the page); return its (job id, status) pairs."""
    positions = [position(conn, job_id) for job_id in page["response"]]
    assert positions == sorted(positions)
    assert all(p <= round(page["server_time"] * MICROS) for p in positions)
    return list(page["response"].items())


def test_page_ids_come_oldest_change_first_with_their_status_at_the_read(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """Ten jobs in pages of three, two of them changed between pages (one listed, one not
    yet): each job is listed once, the listed one again after its change, the unlisted one
    once with its new status, every page in position order."""
    since = ask(client)["server_time"]
    jobs = [f"job-{n}" for n in range(10)]
    for job_id in jobs:
        record(index, job_id, JobStatus.QUEUED)
    first = ask(client, since=since, limit=3)
    assert in_position_order(conn, first) == [(j, "queued") for j in jobs[:3]]
    record(index, "job-1", JobStatus.STARTED)
    record(index, "job-5", JobStatus.STARTED)
    second = ask(client, cursor=first["next_cursor"], limit=3)
    assert in_position_order(conn, second) == [(j, "queued") for j in ("job-3", "job-4", "job-6")]
    third = ask(client, cursor=second["next_cursor"], limit=3)
    assert in_position_order(conn, third) == [(j, "queued") for j in ("job-7", "job-8", "job-9")]
    assert third["next_cursor"] is not None
    fourth = ask(client, cursor=third["next_cursor"], limit=3)
    assert in_position_order(conn, fourth) == [("job-1", "running"), ("job-5", "running")]
    assert fourth["next_cursor"] is None
    assert ask(client, since=fourth["server_time"], limit=3)["response"] == {}


def test_a_filtered_page_with_fewer_matches_still_carries_a_cursor(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page filtered by task looks at PAGE_SCAN entries at most: with many jobs of another
    task first, it holds fewer than `limit` jobs (even none) and a cursor, and following it
    finds every job of the task."""
    monkeypatch.setattr(index_module, "PAGE_SCAN", 5)
    sleeps = []
    for n in range(14):
        submit(client, "echo", {"n": n})
        if n in (6, 13):
            sleeps.append(submit(client, "sleep", {"seconds": 0}))
    pages = follow(client, task="sleep", limit=2, since_seconds=600)
    assert pages[0]["response"] == {}
    assert pages[0]["next_cursor"] is not None
    assert any(len(p["response"]) < 2 and p["next_cursor"] is not None for p in pages)
    assert [job for job, _ in listed(pages)] == sleeps
    assert pages[-1]["next_cursor"] is None


def test_a_filtered_page_stops_at_its_limit(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered page lists at most `limit` jobs even when its scan finds more, and the next
    page goes on right after the last one listed."""
    monkeypatch.setattr(index_module, "PAGE_SCAN", 50)
    sleeps = [submit(client, "sleep", {"seconds": 0}) for _ in range(5)]
    submit(client, "echo")
    pages = follow(client, task="sleep", limit=2, since_seconds=600)
    assert [list(p["response"]) for p in pages[:3]] == [sleeps[:2], sleeps[2:4], sleeps[4:]]
    assert [job for job, _ in listed(pages)] == sleeps


def test_the_cursor_of_a_long_non_ascii_queue_filter_is_accepted_back(
    client: FlaskClient, index: StatusIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next_cursor of a query naming a queue of 200 non-ASCII characters (as the contract
    allows) is accepted back, and following it ends in null."""
    monkeypatch.setattr(index_module, "PAGE_SCAN", 5)
    for n in range(7):
        record(index, f"job-{n}", JobStatus.QUEUED)
    first = ask(client, queue="é" * 200, limit=5, since_seconds=600)
    assert first["response"] == {}
    assert first["next_cursor"] is not None
    pages = follow(client, queue="é" * 200, limit=5, since_seconds=600)
    assert listed(pages) == []


# --- since ---------------------------------------------------------------------------------------


def test_since_the_last_server_time_lists_exactly_the_changes_made_after_it(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """`since` = the previous answer's server_time lists every change made after that answer,
    none made before it, each with its latest status; with nothing changed, nothing."""
    for n in range(4):
        record(index, f"job-{n}", JobStatus.QUEUED)
    since = ask(client)["server_time"]
    rounds: list[dict[str, JobStatus]] = [
        {"job-1": JobStatus.STARTED, "job-4": JobStatus.QUEUED},
        {"job-1": JobStatus.FINISHED, "job-0": JobStatus.CANCELED, "job-4": JobStatus.STARTED},
        {},
        {"job-2": JobStatus.FAILED},
    ]
    for changes in rounds:
        for job_id, status in changes.items():
            record(index, job_id, status)
        answer = ask(client, since=since)
        assert answer["response"] == {
            job_id: RQ_STATUS_NAME[status] for job_id, status in changes.items()
        }
        assert answer["next_cursor"] is None
        assert answer["server_time"] >= since
        since = answer["server_time"]


def test_since_in_pages_goes_on_from_the_last_server_time(
    client: FlaskClient, index: StatusIndex
) -> None:
    """A paged `since` read lists the changes after it, and the null page's server_time starts
    the next read where that one ended."""
    record(index, "old", JobStatus.FINISHED)
    since = ask(client)["server_time"]
    for n in range(5):
        record(index, f"new-{n}", JobStatus.QUEUED)
    pages = follow(client, since=since, limit=2)
    assert [job for job, _ in listed(pages)] == [f"new-{n}" for n in range(5)]
    record(index, "old", JobStatus.FAILED)
    after = follow(client, since=pages[-1]["server_time"], limit=2)
    assert listed(after) == [("old", "failed")]


# --- the GET form --------------------------------------------------------------------------------


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """Return an answer without its timing fields, its cursor reduced to where it goes on."""
    kept = {k: v for k, v in body.items() if k not in TIMING and k != "next_cursor"}
    cursor = body["next_cursor"]
    if cursor is not None:
        decoded = feed.decode_cursor(cursor, key=feed.cursor_key(API_KEY))
        kept["next_cursor"] = (decoded.after, decoded.statuses, decoded.facets)
    return kept


GET_AND_POST: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "nothing": ({}, {}),
    "since_seconds": ({"since_seconds": 120}, {"since_seconds": "120"}),
    "one-status": ({"status": "failed"}, {"status": "failed"}),
    "statuses-repeated": ({"status": ["done", "failed"]}, {"status": ["failed", "done"]}),
    "statuses-comma": ({"status": ["done", "queued"]}, {"status": "queued,done"}),
    "counts": ({"counts": True}, {"counts": "true"}),
    "counts-off": ({"counts": False}, {"counts": "0"}),
    "counts-of-statuses": (
        {"counts": True, "status": ["canceled", "running"]},
        {"counts": "1", "status": "canceled,running"},
    ),
    "task": ({"task": "fail"}, {"task": "fail"}),
    "queue": ({"queue": "default"}, {"queue": "default"}),
    "page": ({"limit": 3}, {"limit": "3"}),
    "filtered-page": (
        {"limit": 2, "task": "echo", "status": "done"},
        {"limit": "2", "task": "echo", "status": "done"},
    ),
    "counted-page": ({"limit": 1, "counts": True}, {"limit": "1", "counts": "true"}),
}


@pytest.mark.parametrize(("body", "params"), GET_AND_POST.values(), ids=list(GET_AND_POST))
def test_get_answers_what_post_answers(
    client: FlaskClient, mixed: dict[str, str], body: dict[str, Any], params: dict[str, Any]
) -> None:
    """The GET form, from the query string, answers the same as POST with the same query."""
    assert comparable(ask_get(client, **params)) == comparable(ask(client, **body))


def test_get_follows_the_cursors_post_gives(client: FlaskClient, mixed: dict[str, str]) -> None:
    """A next_cursor from POST, followed with GET, pages on as POST would, and back again."""
    since = ask(client, since_seconds=600, limit=1)["server_time"] - 60
    pages = [ask(client, since=since, limit=2)]
    use_get = True
    while (cursor := pages[-1]["next_cursor"]) is not None:
        page = (
            ask_get(client, cursor=cursor, limit="2")
            if use_get
            else ask(client, cursor=cursor, limit=2)
        )
        if use_get:
            assert comparable(page) == comparable(ask(client, cursor=cursor, limit=2))
        pages.append(page)
        use_get = not use_get
    assert dict(listed(pages)) == mixed
    assert len(listed(pages)) == len(mixed)


def test_get_without_the_key_is_401(client: FlaskClient) -> None:
    """The GET form needs the API key, as POST does."""
    for params in ({}, {"since_seconds": "5"}, {"limit": "bad"}):
        body = assert_envelope(client.get(JOBS_STATUS, query_string=params), 401)
        assert body["response"] is None


def test_get_refusals_are_400_envelopes(client: FlaskClient) -> None:
    """A query string the contract refuses is a 400 envelope naming the problem."""
    cases = {
        "limit=5&limit=6": "limit may be given once",
        "counts=maybe": "counts must be true or false",
        "id=abc": "Unknown parameter(s): id",
        "status=done,bogus": "Unknown status 'bogus'",
        "cursor=garbage": "not one this service gave out",
        "since=1&since_seconds=1": "not both",
    }
    for query, message in cases.items():
        resp = client.get(f"{JOBS_STATUS}?{query}", headers=AUTH)
        assert message in assert_envelope(resp, 400)["message"], query


# --- the guarantee, as a model -------------------------------------------------------------------

MODEL_JOBS = [f"job-{n}" for n in range(6)]


class FeedClientModel(RuleBasedStateMachine):
    """A client following next_cursor (then `since`) while jobs change between its reads."""

    def __init__(self, client: FlaskClient, conn: redis.Redis, index: StatusIndex) -> None:
        super().__init__()
        self.client = client
        self.conn = conn
        self.index = index
        self.real: dict[str, Status] = {}
        # Jobs changed since the read that last listed them: the ones still to be listed.
        self.unseen: set[str] = set()
        self.last_listed: dict[str, str] = {}
        self.cursor: str | None = None
        self.since = 0.0

    def read(self, fields: dict[str, Any], use_get: bool) -> dict[str, Any]:
        """Ask jobs/status by POST or GET; check each job listed against the model."""
        if use_get:
            body = ask_get(self.client, **{k: str(v) for k, v in fields.items()})
        else:
            body = ask(self.client, **fields)
        fence = round(body["server_time"] * MICROS)
        positions = []
        for job_id, status in body["response"].items():
            assert job_id in self.unseen, f"{job_id} listed again without a change since"
            assert status == self.real[job_id].value, f"{job_id} listed with a stale status"
            self.unseen.discard(job_id)
            self.last_listed[job_id] = status
            positions.append(position(self.conn, job_id))
        assert positions == sorted(positions)
        assert all(p <= fence for p in positions)
        return body

    @initialize()
    def start(self) -> None:
        """Start from an empty Redis with every job queued, all listed by a legacy read."""
        self.conn.flushall()
        for job_id in MODEL_JOBS:
            record(self.index, job_id, JobStatus.QUEUED)
            self.real[job_id] = Status.QUEUED
        self.unseen = set(MODEL_JOBS)
        first = self.read({}, use_get=False)
        assert first["next_cursor"] is None
        assert not self.unseen
        self.since = first["server_time"]

    @rule(job_id=st.sampled_from(MODEL_JOBS), status=st.sampled_from(list(Status)))
    def change(self, job_id: str, status: Status) -> None:
        """Record a new status (or the same again) for a job."""
        record(self.index, job_id, RQ_STATUS[status])
        self.real[job_id] = status
        self.unseen.add(job_id)

    @rule(limit=st.integers(min_value=1, max_value=4), use_get=st.booleans())
    def read_page(self, limit: int, use_get: bool) -> None:
        """Read the next page: after the cursor, or after the last server_time."""
        fields: dict[str, Any] = {"limit": limit}
        if self.cursor is not None:
            fields["cursor"] = self.cursor
        else:
            fields["since"] = self.since
        body = self.read(fields, use_get)
        assert len(body["response"]) <= limit
        self.cursor = body["next_cursor"]
        if self.cursor is None:
            # The page reached its server_time: every change made before it has been listed.
            assert not self.unseen, f"changes never listed: {sorted(self.unseen)}"
            self.since = body["server_time"]

    def teardown(self) -> None:
        """With no more changes, follow to null: each job's last listing is its real status."""
        if not self.real:
            return
        for _ in range(100):
            fields: dict[str, Any] = {"limit": 3}
            fields.update({"cursor": self.cursor} if self.cursor else {"since": self.since})
            body = self.read(fields, use_get=False)
            self.cursor = body["next_cursor"]
            if self.cursor is None:
                self.since = body["server_time"]
                break
        assert self.cursor is None
        assert not self.unseen
        assert self.last_listed == {job_id: s.value for job_id, s in self.real.items()}
        assert self.read({"since": self.since}, use_get=False)["response"] == {}


def test_a_client_following_cursors_sees_each_change_once(
    client: FlaskClient, conn: redis.Redis, index: StatusIndex
) -> None:
    """Whatever jobs change between its reads, a client following next_cursor then `since`
    lists each change once, with the status at the read, and ends on every job's real status."""
    run_state_machine_as_test(
        lambda: FeedClientModel(client, conn, index),
        settings=hypothesis_settings(max_examples=100, stateful_step_count=40, deadline=None),
    )
