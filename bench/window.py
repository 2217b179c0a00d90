"""Full window: the 7-day status answer over 10^6 jobs, streamed in batches, beside small polls."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench.harness import ROOT, ApiClient, Section, fill_index, keep_logs, private_redis, table
from shared import index as index_module
from shared import keys
from shared.index import StatusIndex
from shared.redis import redis_time_micros
from tests.helpers import API_KEY, Process, child_pids, free_port, service_env, start_api

FULL_JOBS = 1_000_000
SMOKE_JOBS = 20_000
FULL_BATCHES = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000]
SMOKE_BATCHES = [1_000, 5_000]
# The retention: the longest window a client may ask for, and every job of the index.
FULL_WINDOW = {"since_seconds": 604_800}
# fill_index's recent jobs changed within the last 60 s, the rest more than 2 h ago.
RECENT_JOBS = 10
SMALL_POLL = {"since_seconds": 600}
CONCURRENT = 8
STATUS_PATH = "/v1/toolkit/jobs/status"
SLOWLOG_LEN = 200_000
MIB = 1024 * 1024


def run(scratch: Path, smoke: bool) -> Section:
    """Measure the batch sizes, then the full window through gunicorn; return the section."""
    total = SMOKE_JOBS if smoke else FULL_JOBS
    batches = SMOKE_BATCHES if smoke else FULL_BATCHES
    with private_redis(scratch / "redis-window") as server:
        conn = server.client()
        fill_index(conn, total, RECENT_JOBS)
        index = StatusIndex(conn, 7 * 86400)
        sweep = [_batch_row(conn, index, size) for size in batches]
        one_read = _one_command(conn)
        port = free_port()
        api = start_api(service_env(server.url), port)
        try:
            rows = _through_api(conn, api, port, total, smoke)
        finally:
            api.stop()
        conn.close()
    return _section(total, sweep, one_read, rows)


@contextmanager
def _slowlog(conn: redis.Redis) -> Iterator[list[dict[str, Any]]]:
    """Log every command meanwhile; yield the list that receives SLOWLOG's entries after."""
    saved = conn.config_get("slowlog-*")
    conn.config_set("slowlog-max-len", SLOWLOG_LEN)
    conn.config_set("slowlog-log-slower-than", 0)
    conn.slowlog_reset()
    entries: list[dict[str, Any]] = []
    try:
        yield entries
        entries += conn.slowlog_get(SLOWLOG_LEN)
    finally:
        conn.config_set("slowlog-log-slower-than", str(saved["slowlog-log-slower-than"]))
        conn.config_set("slowlog-max-len", str(saved["slowlog-max-len"]))
        conn.slowlog_reset()


def _longest(entries: list[dict[str, Any]], name: bytes = b"") -> tuple[float, str]:
    """Return the longest logged command (ms) and its name and key, among those named so."""
    chosen = [e for e in entries if e["command"].upper().startswith(name)]
    if not chosen:
        return 0.0, "-"
    worst = max(chosen, key=lambda e: e["duration"])
    words = worst["command"].split()[:2]
    return worst["duration"] / 1000, b" ".join(words).decode(errors="replace")


def _batch_row(conn: redis.Redis, index: StatusIndex, size: int) -> dict[str, Any]:
    """Read the whole window in-process at batch `size`: commands, their times, the wall time."""
    with _slowlog(conn) as entries:
        started = time.perf_counter()
        window = index.window(
            FULL_WINDOW["since_seconds"], "default", batch=size, stream_batch=size
        )
        jobs = sum(len(m) for _, m in window.ids)
        steps = [time.perf_counter() - started]
        while True:
            t0 = time.perf_counter()
            batch = next(window.rest, None)
            if batch is None:
                break
            jobs += sum(len(m) for _, m in batch)
            steps.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
    ranges = [e["duration"] / 1000 for e in entries if e["command"].startswith(b"ZRANGEBYSCORE")]
    longest, _ = _longest(entries, b"ZRANGEBYSCORE")
    # The first read's MULTI blocks Redis for its five ranges together.
    first = sum(ranges[-5:]) if len(ranges) >= 5 else sum(ranges)
    return {
        "batch": size,
        "jobs": jobs,
        "commands": len(ranges),
        "wall_s": wall,
        "range_p50_ms": statistics.median(ranges),
        "range_max_ms": longest,
        "first_multi_ms": first,
        "step_max_ms": max(steps) * 1e3,
    }


def _one_command(conn: redis.Redis) -> dict[str, Any]:
    """Time the read this replaced: one ZRANGEBYSCORE of the window per set, in one MULTI."""
    low = redis_time_micros(conn) - FULL_WINDOW["since_seconds"] * 1_000_000
    with _slowlog(conn) as entries:
        started = time.perf_counter()
        with conn.pipeline(transaction=True) as pipe:
            for key in keys.status_index_keys():
                pipe.zrangebyscore(key, low, "+inf")
            jobs = sum(len(r) for r in pipe.execute())
        wall = time.perf_counter() - started
    longest, name = _longest(entries, b"ZRANGEBYSCORE")
    return {"jobs": jobs, "wall_s": wall, "longest_ms": longest, "longest": name}


def _rss_mib(pid: int) -> float:
    """Return the resident memory of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssPeak:
    """Sample the API workers' resident memory every 10 ms; keep each one's peak."""

    def __init__(self, pids: list[int]) -> None:
        self.start = {pid: _rss_mib(pid) for pid in pids}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            for pid in self.peak:
                self.peak[pid] = max(self.peak[pid], _rss_mib(pid))

    def stop(self) -> tuple[float, float]:
        """Stop sampling; return (the highest worker RSS before, its highest growth), MiB."""
        self._stop.set()
        self._thread.join()
        growth = max(self.peak[pid] - self.start[pid] for pid in self.peak)
        return max(self.start.values()), growth


def full_window(port: int, keep: bool = False) -> tuple[int, int, float, bytes]:
    """POST the full window; read the answer as it streams. Return status, bytes, s, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
    started = time.perf_counter()
    conn.request("POST", STATUS_PATH, body=json.dumps(FULL_WINDOW), headers=headers)
    resp = conn.getresponse()
    size, kept = 0, bytearray()
    while chunk := resp.read(MIB):
        size += len(chunk)
        if keep:
            kept += chunk
    elapsed = time.perf_counter() - started
    conn.close()
    return resp.status, size, elapsed, bytes(kept)


class Poller:
    """Poll the small window over one keep-alive connection until stopped; keep each latency."""

    def __init__(self, port: int) -> None:
        self.client = ApiClient(port)
        self.times: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            status, body = self.client.post(STATUS_PATH, SMALL_POLL)
            self.times.append(time.perf_counter() - t0)
            if status != 200 or len(json.loads(body)["response"]) != RECENT_JOBS:
                self.failures += 1
            time.sleep(0.005)

    def stop(self) -> dict[str, float]:
        """Stop polling; return the count and p50, p99 and max latency (ms)."""
        self._stop.set()
        self._thread.join()
        self.client.close()
        ordered = sorted(self.times)
        return {
            "polls": len(ordered),
            "failures": self.failures,
            "p50_ms": ordered[len(ordered) // 2] * 1e3,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
            "max_ms": ordered[-1] * 1e3,
        }


def _through_api(
    conn: redis.Redis, api: Process, port: int, total: int, smoke: bool
) -> dict[str, Any]:
    workers = child_pids(api.popen.pid)
    # Checked once, outside the timing: every job, each once, in a well-formed envelope.
    status, size, _, body = full_window(port, keep=True)
    assert status == 200, body[:200]
    answer = json.loads(body, object_pairs_hook=list)
    assert len(dict(answer)["response"]) == total
    del body, answer

    rows: dict[str, Any] = {}
    poller = Poller(port)
    time.sleep(1 if smoke else 5)
    rows["baseline"] = {"poll": poller.stop()}

    with _slowlog(conn) as entries:
        rss = RssPeak(workers)
        times = [full_window(port)[2] for _ in range(1 if smoke else 3)]
        before, growth = rss.stop()
    rows["one"] = {
        "times": times,
        "bytes": size,
        "rss_before_mib": before,
        "rss_growth_mib": growth,
        "longest": _longest(entries),
        "commands": len(entries),
    }

    results: list[tuple[int, int, float, bytes]] = []
    with _slowlog(conn) as entries:
        rss = RssPeak(workers)
        poller = Poller(port)
        threads = [
            threading.Thread(target=lambda: results.append(full_window(port)))
            for _ in range(CONCURRENT)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        poll = poller.stop()
        before, growth = rss.stop()
    # Only run_time's digits may differ.
    assert all(status == 200 and abs(got - size) < 16 for status, got, _, _ in results), results
    rows["eight"] = {
        "times": [elapsed for _, _, elapsed, _ in results],
        "wall_s": wall,
        "bytes": size * CONCURRENT,
        "rss_before_mib": before,
        "rss_growth_mib": growth,
        "longest": _longest(entries),
        "poll": poll,
    }
    return rows


def _worker_class() -> str:
    text = (ROOT / "gunicorn.conf.py").read_text()
    found = re.search(r'^worker_class = "?([\w.:]+)"?$', text, re.M)
    return found.group(1) if found else "?"


def _poll_cell(poll: dict[str, float]) -> str:
    return (
        f"{poll['p50_ms']:.1f} / {poll['p99_ms']:.1f} / {poll['max_ms']:.1f} "
        f"({poll['polls']:,} polls, {poll['failures']} failed)"
    )


def _section(
    total: int, sweep: list[dict[str, Any]], one_read: dict[str, Any], rows: dict[str, Any]
) -> Section:
    one, eight, baseline = rows["one"], rows["eight"], rows["baseline"]
    chosen = index_module.WINDOW_BATCH
    streamed = index_module.STREAM_BATCH
    header = [
        "what",
        "time (s)",
        "bytes",
        "API worker RSS: before / growth (MiB)",
        "longest Redis command (ms)",
        "small poll p50 / p99 / max (ms)",
    ]
    body = [
        [
            "small polls alone (baseline)",
            "-",
            "-",
            "-",
            "-",
            _poll_cell(baseline["poll"]),
        ],
        [
            "1 full-window request (streamed)",
            f"{statistics.median(one['times']):.2f} (median of {len(one['times'])})",
            f"{one['bytes']:,}",
            f"{one['rss_before_mib']:.0f} / {one['rss_growth_mib']:+.1f}",
            f"{one['longest'][0]:.2f} (`{one['longest'][1]}`)",
            "-",
        ],
        [
            f"{CONCURRENT} full-window requests at once, small polls alongside",
            f"{eight['wall_s']:.2f} all; each {min(eight['times']):.2f}-{max(eight['times']):.2f}",
            f"{eight['bytes']:,}",
            f"{eight['rss_before_mib']:.0f} / {eight['rss_growth_mib']:+.1f}",
            f"{eight['longest'][0]:.2f} (`{eight['longest'][1]}`)",
            _poll_cell(eight["poll"]),
        ],
        [
            "the read this replaced: one `ZRANGEBYSCORE low +inf` per set, one MULTI, in-process",
            f"{one_read['wall_s']:.2f}",
            "-",
            "-",
            f"{one_read['longest_ms']:.2f} (`{one_read['longest']}`)",
            "-",
        ],
    ]
    sweep_header = [
        "ids per read",
        "ZRANGEBYSCORE calls (2 per batch)",
        "in-process read of the window (s)",
        "ZRANGEBYSCORE p50 / max (ms)",
        "first MULTI, 5 ranges (ms)",
        "longest step in Python (ms)",
    ]
    sweep_body = [
        [
            f"**{r['batch']:,}**" if r["batch"] in (chosen, streamed) else f"{r['batch']:,}",
            f"{r['commands']:,}",
            f"{r['wall_s']:.2f}",
            f"{r['range_p50_ms']:.2f} / {r['range_max_ms']:.2f}",
            f"{r['first_multi_ms']:.2f}",
            f"{r['step_max_ms']:.1f}",
        ]
        for r in sweep
    ]
    markdown = "\n\n".join(
        [
            f"`POST /v1/toolkit/jobs/status` with `{json.dumps(FULL_WINDOW)}` over a private "
            f"Redis holding {total:,} indexed jobs ({RECENT_JOBS} changed in the last minute, "
            "the rest between 2 h and 6 days ago), through gunicorn started as production "
            f"starts it (gunicorn.conf.py: `{_worker_class()}` workers, 2 of them). The answer "
            f"streams: a first read of at most {chosen:,} ids per status set (one consistent "
            f"snapshot when every set fits), then reads of at most {streamed:,} ids, in batches "
            "that end at a score boundary (docs/index-layout.md, *Reading a window*). Small "
            "polls: one client "
            f"asking `{json.dumps(SMALL_POLL)}` ({RECENT_JOBS} jobs) over a keep-alive connection, "
            "5 ms apart, alone (baseline) and while "
            f"{CONCURRENT} clients each read the full window at once. RSS: the API workers' "
            "resident memory sampled every 10 ms, the largest growth of one worker. Longest "
            "command: SLOWLOG at threshold 0 over the whole run.",
            table(header, body),
            "The batch size, read in-process (`StatusIndex.window(batch=N, stream_batch=N)`, "
            f"same index; the service uses {chosen:,} for the first read, {streamed:,} after): "
            "Redis time per read from SLOWLOG; the first MULTI runs its five ranges back to "
            "back, so it blocks Redis for their sum; a step is one read and its decoding.",
            table(sweep_header, sweep_body),
        ]
    )
    data = {
        "jobs": total,
        "batch": chosen,
        "stream_batch": streamed,
        "sweep": sweep,
        "one_command": one_read,
        **rows,
    }
    return Section("Full window", markdown, [], data)


if __name__ == "__main__":
    keep_logs()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        section = run(Path(tmp), args.smoke)
    print(section.markdown)
    print(f"({time.perf_counter() - begun:.0f} s)")
