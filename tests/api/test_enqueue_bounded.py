"""The bounded enqueue against real Redis: limit, WATCH on the queue list, retries, give-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job

import api.enqueue
from api.enqueue import QueueFullError, enqueue_bounded
from shared import keys, tasks
from shared.redis import connect
from shared.settings import Settings
from shared.wiring import build_services


class HookedPipeline(Pipeline):
    """A pipeline that runs `after_llen` right after each LLEN it sends while WATCHing."""

    after_llen: Callable[[], None] = staticmethod(lambda: None)
    llens = 0

    def llen(self, name: Any) -> Any:
        """Send LLEN; when it ran at once (under WATCH), let the other party act."""
        length = super().llen(name)
        if self.watching and not self.explicit_transaction:
            type(self).llens += 1
            self.after_llen()
        return length


@pytest.fixture
def other_queue(settings: Settings) -> Iterator[Queue]:
    """Return the same queue seen through a second, independent connection."""
    other = connect(settings)
    yield build_services(settings, other).queue
    other.close()


def new_job(queue: Queue) -> Job:
    """Return an echo job created (not yet enqueued) on `queue`."""
    return queue.create_job(tasks.RUNNER, args=("echo", {}))


def hook(
    monkeypatch: pytest.MonkeyPatch, queue: Queue, after_llen: Callable[[], None]
) -> type[HookedPipeline]:
    """Make `queue`'s connection hand out pipelines that call `after_llen` after each LLEN."""
    hooked = type("Hooked", (HookedPipeline,), {"after_llen": staticmethod(after_llen)})
    connection = queue.connection

    def pipeline(transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return hooked(
            connection.connection_pool, connection.response_callbacks, transaction, shard_hint
        )

    monkeypatch.setattr(connection, "pipeline", pipeline)
    return hooked


def waiting(conn: redis.Redis) -> list[str]:
    """Return the ids waiting in the default queue's list, oldest first."""
    return [item.decode() for item in conn.lrange(keys.rq_queue_key("default"), 0, -1)]


def test_submitter_overtaken_after_its_check_is_refused(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, queue: Queue, other_queue: Queue
) -> None:
    """With a limit of 1, a submitter whose LLEN saw 0 but who was overtaken gets the 429."""
    job_a, job_b = new_job(queue), new_job(other_queue)
    overtaken: list[int] = []

    def b_submits_completely() -> None:
        if not overtaken:
            overtaken.append(enqueue_bounded(other_queue, job_b, 1))

    hooked = hook(monkeypatch, queue, b_submits_completely)
    with pytest.raises(QueueFullError) as refused:
        enqueue_bounded(queue, job_a, 1)
    assert overtaken == [1]
    assert hooked.llens == 2
    assert refused.value.length == 1
    assert waiting(conn) == [job_b.id]


def test_submitter_overtaken_below_the_limit_retries_and_gets_in(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, queue: Queue, other_queue: Queue
) -> None:
    """A submitter whose EXEC lost the WATCH retries, and joins when there is still room."""
    job_a, job_b = new_job(queue), new_job(other_queue)

    def b_submits_once() -> None:
        if not waiting(conn):
            enqueue_bounded(other_queue, job_b, 2)

    hooked = hook(monkeypatch, queue, b_submits_once)
    assert enqueue_bounded(queue, job_a, 2) == 2
    assert hooked.llens == 2
    assert waiting(conn) == [job_b.id, job_a.id]


def test_gives_up_when_the_queue_changes_on_every_attempt(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, queue: Queue, other_queue: Queue
) -> None:
    """After MAX_ATTEMPTS lost WATCHes in a row, enqueue_bounded raises instead of looping."""
    monkeypatch.setattr(api.enqueue, "MAX_ATTEMPTS", 3)
    other = other_queue.connection
    hooked = hook(monkeypatch, queue, lambda: other.rpush(other_queue.key, "filler"))
    with pytest.raises(RuntimeError, match="queue 'default' changed on every one of 3 attempts"):
        enqueue_bounded(queue, new_job(queue), 100)
    assert hooked.llens == 3
    assert waiting(conn) == ["filler"] * 3


@pytest.mark.parametrize(("waiting_before", "limit"), [(0, 1), (2, 3), (9, 10)])
def test_room_below_the_limit_enqueues(
    conn: redis.Redis, queue: Queue, waiting_before: int, limit: int
) -> None:
    """Below the limit the job joins, and the answer is the list length right after it."""
    for _ in range(waiting_before):
        conn.rpush(queue.key, "filler")
    job = new_job(queue)
    assert enqueue_bounded(queue, job, limit) == waiting_before + 1
    assert waiting(conn)[-1] == job.id


@pytest.mark.parametrize(("waiting_before", "limit"), [(1, 1), (3, 3), (4, 3)])
def test_a_queue_at_its_limit_refuses(
    conn: redis.Redis, queue: Queue, waiting_before: int, limit: int
) -> None:
    """At or past the limit the job is refused with the length seen, and nothing is written."""
    for _ in range(waiting_before):
        conn.rpush(queue.key, "filler")
    job = new_job(queue)
    with pytest.raises(QueueFullError, match=f"^queue holds {waiting_before} waiting jobs$") as e:
        enqueue_bounded(queue, job, limit)
    assert e.value.length == waiting_before
    assert waiting(conn) == ["filler"] * waiting_before
    assert not conn.exists(keys.rq_job_key(job.id))


def test_no_limit_enqueues_whatever_the_length(conn: redis.Redis, queue: Queue) -> None:
    """A limit of 0 means no limit: the job joins a long queue; the new length is returned."""
    for _ in range(50):
        conn.rpush(queue.key, "filler")
    job = new_job(queue)
    assert enqueue_bounded(queue, job, 0) == 51
    assert waiting(conn)[-1] == job.id
