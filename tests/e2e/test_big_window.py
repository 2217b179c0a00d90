"""A full-window status answer over 10^6 indexed jobs through real gunicorn: no Redis command
over 10 ms, flat API memory, small polls answered meanwhile, a cut body when Redis dies."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared import keys
from shared.index import STATUSES
from shared.redis import MICROS, redis_time_micros
from tests.helpers import (
    API_KEY,
    HOST,
    JOBS_STATUS,
    Process,
    RedisServer,
    child_pids,
    free_port,
    jobs_status,
    service_env,
    start_api,
    wait_until,
)

JOBS = 1_000_000
RECENT = 10
FULL_WINDOW = 604_800
SMALL_WINDOW = 600
CONCURRENT = 8
MIB = 1024 * 1024

pytestmark = pytest.mark.e2e


@dataclass
class BigIndex:
    """A private Redis holding JOBS indexed jobs (RECENT of them within a minute) and an API."""

    server: RedisServer
    conn: redis.Redis
    api: Process
    port: int

    @property
    def worker_pid(self) -> int:
        """Return the pid of the API's single worker process."""
        (pid,) = child_pids(self.api.popen.pid)
        return pid


def fill(conn: redis.Redis, jobs: int, recent: int) -> None:
    """Index `jobs` jobs over every status, the last `recent` changed within the last minute."""
    now = redis_time_micros(conn)
    with conn.pipeline(transaction=False) as pipe:
        for start in range(0, jobs, 10_000):
            sets: dict[str, dict[str, int]] = {}
            for i in range(start, min(start + 10_000, jobs)):
                # Old ones between 2 h and ~6 days ago, ten per microsecond; recent ones apart.
                age = 30 if i >= jobs - recent else 7200 + i // 10 * 5
                key = keys.status_index_key(STATUSES[i * 7 % len(STATUSES)])
                sets.setdefault(key, {})[f"{i:08d}-0000-4000-8000-{i:012x}"] = now - age * MICROS
            for key, members in sets.items():
                pipe.zadd(key, members)
            pipe.execute()
    conn.hset(keys.marker_key(), "schema", keys.SCHEMA_VERSION)


def start(directory: Path, jobs: int) -> BigIndex:
    """Start a private Redis, fill it with `jobs` jobs, and start a one-worker API on it."""
    server = RedisServer(directory).start()
    conn = server.client()
    try:
        fill(conn, jobs, RECENT)
        port = free_port()
        api = start_api(service_env(server.url), port, workers=1)
    except BaseException:
        conn.close()
        server.stop()
        raise
    return BigIndex(server, conn, api, port)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigIndex]:
    """Return the filled private Redis and its API, shared by the tests of this module."""
    index = start(tmp_path_factory.mktemp("big-window"), JOBS)
    yield index
    index.api.stop()
    index.conn.close()
    index.server.stop()


@contextmanager
def full_window(port: int) -> Iterator[http.client.HTTPResponse]:
    """Send the full-window request; yield the answer, its body still to read."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        body = json.dumps({"since_seconds": FULL_WINDOW})
        headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
        conn.request("POST", JOBS_STATUS, body, headers)
        yield conn.getresponse()
    finally:
        conn.close()


def read_full_window(port: int, keep: bool = True) -> tuple[int, bytes, int]:
    """Return the full window's status, its body (when kept) and its length in bytes."""
    kept, size = bytearray(), 0
    with full_window(port) as resp:
        while chunk := resp.read(MIB):
            size += len(chunk)
            if keep:
                kept += chunk
    return resp.status, bytes(kept), size


def rss_mib(pid: int) -> float:
    """Return the resident memory of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss:
    """Sample a process's resident memory every 10 ms while in the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def slow_commands(conn: redis.Redis) -> list[str]:
    """Return the commands SLOWLOG holds (those over its threshold), as text."""
    return [entry["command"].decode(errors="replace")[:80] for entry in conn.slowlog_get(1000)]


@pytest.mark.timeout(300)
def test_full_window_streams_with_short_commands_and_flat_memory(big: BigIndex) -> None:
    """10^6 jobs stream whole and once each; no Redis command over 10 ms; worker RSS +<30 MB."""
    read_full_window(big.port, keep=False)  # warm the worker up: imports, first allocations
    big.conn.config_set("slowlog-log-slower-than", 10_000)
    big.conn.slowlog_reset()
    with PeakRss(big.worker_pid) as rss:
        status, body, size = read_full_window(big.port)
    assert slow_commands(big.conn) == []
    assert status == 200
    assert rss.peak - rss.before < 30, (rss.before, rss.peak)
    envelope = json.loads(body, object_pairs_hook=list)
    response = dict(envelope)["response"]
    assert len(response) == len(dict(response)) == JOBS
    assert [name for name, _ in envelope][:5] == ["code", "id", "job_id", "response", "message"]
    assert size > 40 * MIB


@pytest.mark.timeout(300)
def test_small_polls_answer_within_a_second_beside_eight_full_windows(big: BigIndex) -> None:
    """While 8 clients read the full window at once, small polls keep answering within 1 s."""
    results: list[tuple[int, int]] = []

    def full() -> None:
        status, _, size = read_full_window(big.port, keep=False)
        results.append((status, size))

    readers = [threading.Thread(target=full) for _ in range(CONCURRENT)]
    for reader in readers:
        reader.start()
    polls: list[float] = []
    while any(reader.is_alive() for reader in readers):
        reply = jobs_status(big.port, SMALL_WINDOW)
        assert reply.status == 200
        assert len(reply.body["response"]) == RECENT
        polls.append(reply.elapsed)
    for reader in readers:
        reader.join()
    assert len(results) == CONCURRENT
    assert all(status == 200 and size > 40 * MIB for status, size in results), results
    assert len(polls) >= 5
    assert max(polls) < 1.0, sorted(polls)[-5:]


@pytest.mark.timeout(300)
def test_redis_dying_mid_stream_cuts_the_body(tmp_path: Path) -> None:
    """When Redis stops after the answer started, the client gets a cut, invalid body."""
    index = start(tmp_path, 300_000)
    try:
        with full_window(index.port) as resp:
            assert resp.status == 200
            head = resp.read(64 * 1024)
            assert head.startswith(b'{"code":200,')
            # The worker blocks on the full socket (the client reads no more) before Redis stops.
            time.sleep(0.5)
            index.server.stop()
            rest = bytearray()
            with pytest.raises(http.client.IncompleteRead):
                while chunk := resp.read(MIB):
                    rest += chunk
        with pytest.raises(json.JSONDecodeError):
            json.loads(head + rest)
        wait_until(lambda: "the streamed answer broke off" in index.api.output(), timeout=10)
    finally:
        index.api.stop()
        index.conn.close()
        index.server.stop()
