"""What a page of the change feed costs at the start, middle and end of a large index, against
a page read by offset and against one bare ZRANGEBYSCORE."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis

from api import feed
from bench.harness import ApiClient, Sample, Section, api_process, private_redis, repeat, table
from shared import keys
from shared.index import Facets, Start, StatusIndex
from shared.redis import redis_time_micros
from shared.settings import Settings
from shared.status import Status
from shared.wiring import build_services
from tests.helpers import API_KEY

FULL_SIZES = [10_000, 1_000_000]
SMOKE_SIZES = [1_000, 10_000]
PAGE = 100
STATUS_PATH = "/v1/toolkit/jobs/status"
# A busy service's spread of latest statuses, in Status order.
SPREAD = [(Status.QUEUED, 0.05), (Status.RUNNING, 0.03), (Status.DONE, 0.85)]
SPREAD += [(Status.FAILED, 0.05), (Status.CANCELED, 0.02)]
# Positions 1 ms apart: 10^6 changes span about 17 minutes, all of them in any day's window.
SPACING_US = 1_000


def run(scratch: Path, smoke: bool) -> Section:
    """Measure pages at three depths of indexes of each size; return the report's section."""
    rows: list[dict[str, Any]] = []
    with private_redis(scratch / "redis-pages") as server, api_process(server.url) as port:
        conn = server.client()
        index = build_services(Settings(redis_url=server.url), conn).index
        api = ApiClient(port)
        for size in SMOKE_SIZES if smoke else FULL_SIZES:
            conn.flushall()
            first = fill(conn, size)
            index.mark()
            for where, depth in (("start", 0), ("middle", size // 2), ("end", size - PAGE)):
                rows.append(_measure(conn, index, api, size, where, first + depth * SPACING_US))
        api.close()
    return _section(rows)


def fill(conn: redis.Redis, size: int) -> int:
    """Record `size` jobs at unique positions ending now, statuses spread; return the first."""
    last = redis_time_micros(conn)
    first = last - (size - 1) * SPACING_US
    with conn.pipeline(transaction=False) as pipe:
        batch: dict[Status, dict[str, int]] = {}
        for i in range(size):
            status = _status(i)
            batch.setdefault(status, {})[str(uuid.uuid4())] = first + i * SPACING_US
            if i % 10_000 == 9_999 or i == size - 1:
                for chosen, members in batch.items():
                    pipe.zadd(keys.status_index_key(chosen), members)
                pipe.execute()
                batch.clear()
    conn.set(keys.clock_key(), last)
    return first


def _status(i: int) -> Status:
    point = (i * 7919 % 1000) / 1000
    for status, share in SPREAD:
        if point < share:
            return status
        point -= share
    return Status.DONE


def _measure(
    conn: redis.Redis, index: StatusIndex, api: ApiClient, size: int, where: str, position: int
) -> dict[str, Any]:
    after = position - 1
    query = feed.FeedQuery(Start(after=after), None, Facets(), False, PAGE, None)
    cursor = feed.encode_cursor(after, query, after, key=feed.cursor_key(API_KEY))

    def page() -> None:
        assert len(index.page(Start(after=after), "default", PAGE).ids) == PAGE

    def http() -> None:
        status, _ = api.post(STATUS_PATH, {"cursor": cursor})
        assert status == 200

    def filtered() -> None:
        # A task no job has: the page looks at PAGE_SCAN entries and lists none.
        index.page(Start(after=after), "default", PAGE, facets=Facets(task="none"))

    done = keys.status_index_key(Status.DONE)
    rank = conn.zcount(done, "-inf", f"({after}")

    def floor() -> None:
        conn.zrangebyscore(done, f"({after}", "+inf", start=0, num=PAGE)

    def by_offset() -> None:
        # A feed paged by offset from the window's start: Redis walks `rank` entries first.
        conn.zrangebyscore(done, "-inf", "+inf", start=rank, num=PAGE)

    row: dict[str, Any] = {"size": size, "where": where}
    for name, fn in (
        ("api", http),
        ("page", page),
        ("filtered", filtered),
        ("floor", floor),
        ("offset", by_offset),
    ):
        conn.config_resetstat()
        sample = repeat(fn, min_runs=20, max_runs=300, budget=1.0)
        calls = len(sample.times) + 1
        row[name] = sample
        row[f"{name}_redis_us"] = _redis_usec(conn) / calls
    return row


def _redis_usec(conn: redis.Redis) -> float:
    """Return the µs Redis spent in commands since the last CONFIG RESETSTAT (but INFO's)."""
    stats: dict[str, dict[str, Any]] = conn.info("commandstats")  # type: ignore[assignment]
    return float(
        sum(
            s["usec"] for name, s in stats.items() if name not in ("cmdstat_info", "cmdstat_config")
        )
    )


def _section(rows: list[dict[str, Any]]) -> Section:
    header = [
        "index",
        "page at",
        "API (HTTP, cursor)",
        "StatusIndex.page",
        "Redis per page",
        "filtered page (scans 1,000)",
        "floor: one ZRANGEBYSCORE",
        "baseline: paged by offset",
        "offset Redis per page",
    ]
    body = []
    for row in rows:
        sample: Sample = row["page"]
        body.append(
            [
                f"{row['size']:,}",
                row["where"],
                row["api"].ms(),
                sample.ms(),
                f"{row['page_redis_us']:.0f} µs",
                row["filtered"].ms(),
                row["floor"].ms(),
                row["offset"].ms(),
                f"{row['offset_redis_us']:.0f} µs",
            ]
        )
    text = "\n\n".join(
        [
            f"A {PAGE}-job page of `jobs/status` followed by cursor, at the start, middle and end "
            "of an index of each size (positions unique and 1 ms apart, statuses spread as a busy "
            "service's: 85% done). **API**: `POST` with the page's cursor through gunicorn "
            "(keep-alive client); **StatusIndex.page**: the same read in-process; **Redis per "
            "page**: the µs Redis spent in its commands (INFO commandstats), per page. Against "
            "the **floor**, one bare `ZRANGEBYSCORE` of 100 ids from the same position of the "
            "`done` set, and the **baseline** a feed paged by offset would pay: the same 100 ids "
            "as `ZRANGEBYSCORE <window start> +inf LIMIT <offset> 100`, which walks the offset "
            "entry by entry. A filtered "
            "page (`task` that no job has) looks at 1,000 entries and reads each one's job. "
            "Each cell: median (min-max).",
            table(header, body),
            "A page reads at most `limit` entries of each status set from its cursor's "
            "position: its cost stays flat from the start to the end of a 10^6-job index and "
            "from a 10^4 to a 10^6-job index.",
        ]
    )
    data = [
        {key: (value.times if isinstance(value, Sample) else value) for key, value in row.items()}
        for row in rows
    ]
    return Section(title="Pages", markdown=text, figures=[], data={"rows": data})
