"""Status query cost as the index grows: the API against the Redis floor and a JSON folder."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import jsonfiles
from bench.harness import (
    OUT,
    ApiClient,
    Sample,
    Section,
    api_process,
    fill_index,
    keep_logs,
    private_redis,
    repeat,
    table,
)
from shared import keys
from shared.index import StatusIndex
from shared.settings import Settings
from shared.wiring import build_services

FULL_SIZES = [1_000, 10_000, 100_000, 1_000_000]
FULL_WINDOWS = [100, 10_000, 100_000]
SMOKE_SIZES = [200, 2_000]
SMOKE_WINDOWS = [20, 200]
# Between the recent entries (< 60 s old) and the old ones (> 2 h old): matches exactly the recent.
WINDOW_SECONDS = 3600
STATUS_PATH = "/v1/toolkit/jobs/status"


def run(scratch: Path, smoke: bool) -> Section:
    """Measure every (index size, window) pair and return the section for the report."""
    sizes, windows = (SMOKE_SIZES, SMOKE_WINDOWS) if smoke else (FULL_SIZES, FULL_WINDOWS)
    rows: list[dict[str, Any]] = []
    with private_redis(scratch / "redis-query") as server, api_process(server.url) as port:
        conn = server.client()
        index = build_services(Settings(redis_url=server.url), conn).index
        api = ApiClient(port)
        for size in sizes:
            for window in [w for w in windows if w <= size]:
                rows.append(_measure(conn, index, api, scratch, size, window, smoke))
        api.close()
    return _section(rows, OUT if not smoke else scratch)


def _measure(
    conn: Any,
    index: StatusIndex,
    api: ApiClient,
    scratch: Path,
    size: int,
    window: int,
    smoke: bool,
) -> dict[str, Any]:
    conn.flushall()
    recent = fill_index(conn, size, window)
    expected = set(recent)

    # Checked once, outside the timing: a poller's own JSON parsing is not the API's cost.
    status, body = api.post(STATUS_PATH, {"since_seconds": WINDOW_SECONDS})
    assert status == 200, body[:200]
    assert set(json.loads(body)["response"]) == expected

    def via_api() -> None:
        assert api.post(STATUS_PATH, {"since_seconds": WINDOW_SECONDS})[0] == 200

    floor = floor_read(index, window)

    def raw_read() -> None:
        ids = index.window_ids(WINDOW_SECONDS, "default").ids
        assert sum(len(members) for _, members in ids) == window

    folder = scratch / f"jsonfiles-{size}"
    _mirror_to_files(conn, folder)

    def baseline() -> None:
        assert set(jsonfiles.changed_since(folder, WINDOW_SECONDS)) == expected

    budget = 0.5 if smoke else 3.0
    api_sample = repeat(via_api, budget=budget)
    floor_sample = repeat(floor, budget=budget)
    raw_sample = repeat(raw_read, budget=budget)
    base_sample = repeat(baseline, min_runs=3 if size >= 100_000 else 5, budget=budget)
    shutil.rmtree(folder)
    print(f"  index {size:>9,} window {window:>7,}: api {api_sample.ms()}", flush=True)
    return {
        "size": size,
        "window": window,
        "api": api_sample,
        "floor": floor_sample,
        "raw": raw_sample,
        "baseline": base_sample,
    }


def floor_read(index: StatusIndex, window: int) -> Callable[[], None]:
    """Return the floor of a window's answer: redis-py's reply decoded into {job_id: status}."""

    def floor() -> None:
        # What any client needs: the ids as strings, each with its status.
        ids = index.window_ids(WINDOW_SECONDS, "default").ids
        statuses = {job_id.decode(): status for status, members in ids for job_id in members}
        assert len(statuses) == window

    return floor


def _mirror_to_files(conn: Any, folder: Path) -> None:
    """Write the same statuses and change times as one JSON file per job."""
    statuses: dict[str, tuple[str, float]] = {}
    for key in keys.status_index_keys():
        status = key.rsplit(":", 1)[1]
        for member, score in conn.zscan_iter(key, count=10_000):
            statuses[member.decode()] = (status, score / 1e6)
    jsonfiles.write(folder, statuses)


def _section(rows: list[dict[str, Any]], out: Path) -> Section:
    header = [
        "index size",
        "window",
        "API (gunicorn)",
        "floor: {id: status} via redis-py",
        "raw read (no decoding)",
        "JSON files",
        "API / floor",
        "API / raw",
        "JSON files / API",
    ]
    body = []
    for row in rows:
        api: Sample = row["api"]
        body.append(
            [
                f"{row['size']:,}",
                f"{row['window']:,}",
                api.ms(),
                row["floor"].ms(),
                row["raw"].ms(),
                row["baseline"].ms(),
                f"{api.median / row['floor'].median:.2f}",
                f"{api.median / row['raw'].median:.2f}",
                f"{row['baseline'].median / api.median:.1f}",
            ]
        )
    figure = _plot(rows, out)
    markdown = "\n\n".join(
        [
            "`POST /v1/toolkit/jobs/status` through gunicorn (2 gevent workers, keep-alive "
            "client) against **the floor**, redis-py reading the same answer, `{job_id: status}` "
            "as Python strings, straight from Redis in the fewest round trips that are also the "
            "fastest (`StatusIndex.window_ids()` and a decode: two; the one-round-trip Lua read "
            "is slower, see below); against the **raw read**, the same two round trips with the "
            "ids left as the bytes redis-py returns, grouped by status (a lower bound: not yet "
            "the answer); and against the replaced design, a folder of one JSON file per job "
            "filtered by modification time (`bench/jsonfiles.py`, in-process, no HTTP). Each "
            "cell: median (min-max) of repeated runs.",
            table(header, body),
            f"![query time](bench/{figure.name})" if figure else "",
        ]
    )
    data = {
        f"{r['size']}/{r['window']}": {k: r[k].times for k in ("api", "floor", "raw", "baseline")}
        for r in rows
    }
    return Section(
        "Status query cost as the index grows", markdown, [figure] if figure else [], data
    )


def _plot(rows: list[dict[str, Any]], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    windows = sorted({r["window"] for r in rows})
    styles = {"api": "-", "floor": "--", "baseline": ":"}
    labels = {"api": "API", "floor": "floor", "baseline": "JSON files"}
    for window in windows:
        picked = [r for r in rows if r["window"] == window]
        if len(picked) < 2:
            continue
        for kind, style in styles.items():
            ax.plot(
                [r["size"] for r in picked],
                [r[kind].median * 1e3 for r in picked],
                style,
                marker="o",
                label=f"{labels[kind]}, window {window:,}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("jobs in the index")
    ax.set_ylabel("median time per query (ms)")
    ax.set_title("Status query: cost vs index size, per window")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "query.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    keep_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        section = run(Path(tmp), args.smoke)
    print(section.markdown)
    print(f"({time.perf_counter() - started:.0f} s)")
