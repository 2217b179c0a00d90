"""What every benchmark shares: a private Redis, API processes, timing and statistics."""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from shared import keys
from shared.index import StatusIndex
from shared.redis import redis_time_micros
from tests.helpers import API_KEY, Process, RedisServer, free_port, service_env, start_api

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"
LOGS = ROOT / "bench" / "out" / "logs"


def keep_logs() -> Path:
    """Send the logs of every process a benchmark starts to bench/out/logs, emptied first."""
    # Kept for a look after a failed run, and never in the system's temporary directory.
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    Process.log_dir = LOGS
    return LOGS


@dataclass(frozen=True)
class Sample:
    """Timings of repeated runs of one measurement, in seconds."""

    times: list[float]

    @property
    def median(self) -> float:
        """Return the median time."""
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        """Return the lowest and highest time."""
        return min(self.times), max(self.times)

    def ms(self) -> str:
        """Return 'median (min-max)' in milliseconds."""
        lo, hi = self.spread
        return f"{self.median * 1e3:.3g} ms ({lo * 1e3:.3g}-{hi * 1e3:.3g})"


def repeat(
    fn: Callable[[], Any], *, min_runs: int = 5, max_runs: int = 50, budget: float = 2.0
) -> Sample:
    """Time `fn` at least `min_runs` times, more while within `budget` seconds (after a warm-up)."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (
        len(times) < min_runs or time.perf_counter() - started < budget
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Sample(times)


@contextmanager
def private_redis(directory: Path) -> Iterator[RedisServer]:
    """Run a private redis-server (no persistence) for the duration of a benchmark."""
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def api_process(redis_url: str, workers: int = 2, **env: str) -> Iterator[int]:
    """Run the API under gunicorn on a free port; yield the port."""
    port = free_port()
    proc = start_api(service_env(redis_url, **env), port, workers=workers)
    try:
        yield port
    finally:
        proc.stop()


class ApiClient:
    """A keep-alive HTTP client of one API process."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: Any = None) -> tuple[int, bytes]:
        """POST `body` as JSON; return the status and the raw answer."""
        payload = b"" if body is None else json.dumps(body).encode()
        headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
        try:
            self.conn.request("POST", path, body=payload, headers=headers)
            resp = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # gunicorn closes a keep-alive connection idle for a few seconds: reconnect once.
            self.conn.close()
            self.conn.request("POST", path, body=payload, headers=headers)
            resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def fill_index(
    conn: redis.Redis, total: int, recent: int, *, recent_age: float = 60, old_age: float = 7200
) -> list[str]:
    """Put `total` job ids in the index, `recent` of them changed within `recent_age` seconds.

    The rest changed between `old_age` seconds and six days ago, so any window between the two
    ages matches exactly the recent ones. Statuses are spread as a busy service's would be.
    Return the recent ids.
    """
    now = redis_time_micros(conn)
    spread = [("done", 0.85), ("failed", 0.05), ("canceled", 0.02), ("running", 0.03)]
    recent_ids: list[str] = []
    batch: dict[str, dict[str, int]] = {}
    with conn.pipeline(transaction=False) as pipe:
        for i in range(total):
            job_id = str(uuid.uuid4())
            is_recent = i >= total - recent
            if is_recent:
                recent_ids.append(job_id)
                score = now - int((i % 1000) / 1000 * recent_age * 1e6)
            else:
                score = now - int((old_age + (i % 100_000) / 100_000 * 5 * 86400) * 1e6)
            status = _pick(spread, i)
            batch.setdefault(status, {})[job_id] = score
            if sum(len(m) for m in batch.values()) >= 5000:
                _flush(pipe, batch)
        _flush(pipe, batch)
    StatusIndex(conn, 7 * 86400).mark()
    return recent_ids


def _pick(spread: list[tuple[str, float]], i: int) -> str:
    position = (i * 7919 % 1000) / 1000
    for status, share in spread:
        if position < share:
            return status
        position -= share
    return "queued"


def _flush(pipe: Any, batch: dict[str, dict[str, int]]) -> None:
    for status, members in batch.items():
        pipe.zadd(f"{keys.PREFIX}index:{status}", members)
    pipe.execute()
    batch.clear()


def machine() -> dict[str, str]:
    """Return a description of this machine and the versions that matter."""
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        mem_kb = int(meminfo.read_text().split()[1])
    return {
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": next((v for v in redis_version if v.startswith("v=")), "?")[2:],
    }


@dataclass
class Section:
    """One part of docs/benchmarks.md: a title, markdown (tables and notes) and PNG figures."""

    title: str
    markdown: str
    figures: list[Path]
    data: dict[str, Any]


def table(header: list[str], rows: list[list[Any]]) -> str:
    """Return a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class WrkResult:
    """What wrk reports: requests per second, latency percentiles (ms), non-2xx answers."""

    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int


def wrk(port: int, path: str, body: str, *, connections: int, seconds: float) -> WrkResult:
    """Load `path` with POSTs of `body` from `connections` keep-alive connections for `seconds`."""
    script = ROOT / "bench" / "post.lua"
    threads = max(1, min(connections, 2))
    env = {**os.environ, "API_KEY": API_KEY, "WRK_BODY": body}
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=seconds + 60,
    ).stdout
    return _parse_wrk(out)


def _parse_wrk(out: str) -> WrkResult:
    rps = p50 = p99 = 0.0
    non_2xx = requests = 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif line.strip().startswith("50%"):
            p50 = _ms(parts[1])
        elif line.strip().startswith("99%"):
            p99 = _ms(parts[1])
        elif line.startswith("Non-2xx"):
            non_2xx = int(parts[-1])
        elif "requests in" in line:
            requests = int(parts[0])
    return WrkResult(rps, p50, p99, non_2xx, requests)


def _ms(text: str) -> float:
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)
