"""StatusIndex.page at its edges, on the real Redis: where a page ends, what it counts, what a
filtered page looks at, and positions several old entries share."""

from __future__ import annotations

import pickle

import redis
from rq.job import JobStatus

from shared import keys
from shared.index import Facets, Start, StatusIndex
from shared.redis import redis_time_micros
from shared.status import Status
from tests.helpers import record

DONE = keys.status_index_key(Status.DONE)
FAILED = keys.status_index_key(Status.FAILED)


def job_of(conn: redis.Redis, job_id: str, queue: str, meta: bytes | None) -> None:
    """Give `job_id` a job hash of `queue`, with `meta` as RQ stores it (None: none)."""
    conn.hset(keys.rq_job_key(job_id), "origin", queue)
    if meta is not None:
        conn.hset(keys.rq_job_key(job_id), "meta", meta)


def ids(page_ids: list[tuple[bytes, Status]]) -> list[str]:
    """Return a page's job ids as text, in its order."""
    return [member.decode() for member, _ in page_ids]


def test_a_page_that_takes_the_last_entries_exactly_ends_the_feed(index: StatusIndex) -> None:
    """Exactly `limit` entries left, spread over two sets: the page lists them all and its
    cursor is null (no empty page to follow)."""
    record(index, "a", JobStatus.FINISHED)
    record(index, "b", JobStatus.FAILED)
    record(index, "c", JobStatus.FINISHED)
    page = index.page(Start(seconds=60), "default", 3)
    assert ids(page.ids) == ["a", "b", "c"]
    assert page.end is None
    more = index.page(Start(seconds=60), "default", 2)
    assert ids(more.ids) == ["a", "b"]
    assert more.end is not None


def test_a_page_says_the_queue_length_and_counts_only_when_asked(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """A page carries the length of the queue it was asked about, and counts only on request."""
    conn.rpush(keys.rq_queue_key("other"), "x", "y")
    record(index, "a", JobStatus.QUEUED)
    plain = index.page(Start(seconds=60), "other", 5)
    assert plain.queue_length == 2
    assert plain.counts is None
    counted = index.page(Start(seconds=60), "other", 5, counts=True)
    assert counted.counts == dict.fromkeys(Status, 0) | {Status.QUEUED: 1}


def test_a_filtered_page_looks_past_its_limit_for_matches(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """With a queue filter a page looks at up to PAGE_SCAN entries, not `limit`: the one match
    behind five others is listed on the first page."""
    for n in range(5):
        record(index, f"other-{n}", JobStatus.FINISHED)
        job_of(conn, f"other-{n}", "elsewhere", None)
    record(index, "mine", JobStatus.FINISHED)
    job_of(conn, "mine", "default", None)
    page = index.page(Start(seconds=60), "default", 1, facets=Facets(queue="default"))
    assert ids(page.ids) == ["mine"]
    assert page.end is None


def test_a_job_whose_meta_cannot_be_read_is_of_no_task(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """Under a task filter, a job whose meta RQ's serializer cannot read (another serializer's)
    is left out; one whose meta names the task is listed."""
    record(index, "garbled", JobStatus.FINISHED)
    job_of(conn, "garbled", "default", b"{not a pickle")
    record(index, "echo", JobStatus.FINISHED)
    job_of(conn, "echo", "default", pickle.dumps({"task": "echo"}))
    page = index.page(Start(seconds=60), "default", 10, facets=Facets(task="echo"))
    assert ids(page.ids) == ["echo"]


def test_a_page_read_to_its_limit_finishes_the_position_it_ends_in(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """Three old entries share one position in one set and a page of two reads that set to its
    limit: it lists all three, and the next page starts after them."""
    shared = redis_time_micros(conn) - 1_000_000
    conn.zadd(DONE, dict.fromkeys(("old-a", "old-b", "old-c"), shared))
    record(index, "new", JobStatus.FINISHED)
    page = index.page(Start(seconds=60), "default", 2)
    assert ids(page.ids) == ["old-a", "old-b", "old-c"]
    assert page.end == shared
    rest = index.page(Start(after=shared), "default", 2)
    assert ids(rest.ids) == ["new"]


def test_a_filtered_page_finishes_its_position_with_matches_only(
    conn: redis.Redis, index: StatusIndex
) -> None:
    """Finishing a shared position, a filtered page adds only the entries of its queue."""
    shared = redis_time_micros(conn) - 1_000_000
    conn.zadd(FAILED, dict.fromkeys(("q-a", "q-b", "x-c", "q-d"), shared))
    for job_id in ("q-a", "q-b", "q-d"):
        job_of(conn, job_id, "default", None)
    job_of(conn, "x-c", "elsewhere", None)
    record(index, "q-later", JobStatus.FAILED)
    job_of(conn, "q-later", "default", None)
    page = index.page(Start(seconds=60), "default", 1, facets=Facets(queue="default"))
    assert ids(page.ids) == ["q-a", "q-b", "q-d"]
    assert page.end == shared
