"""The HTTP floor: jobs/status against a bare endpoint answering the same bytes, on the same
gunicorn set-up; and a per-stage profile of one poll."""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import (
    ApiClient,
    Section,
    api_process,
    fill_index,
    private_redis,
    repeat,
    table,
    wrk,
)
from bench.query import WINDOW_SECONDS, floor_read
from shared.settings import Settings
from shared.wiring import build_services
from tests.helpers import API_KEY, BIN, Process, free_port, service_env, wait_healthy

STATUS_PATH = "/v1/toolkit/jobs/status"
# (label, index size, window size): the common poll, and a large window in a large index.
FULL_CASES = [("100-job window", 10_000, 100), ("10^4-job window, 10^6 index", 1_000_000, 10_000)]
SMOKE_CASES = [("100-job window", 1_000, 100)]
WINDOW = json.dumps({"since_seconds": WINDOW_SECONDS})


def run(scratch: Path, smoke: bool) -> Section:
    """Measure each case against its bare endpoint at 8 and 64 connections; profile a poll."""
    cases = SMOKE_CASES if smoke else FULL_CASES
    seconds, rounds = (2, 1) if smoke else (10, 3)
    rows: list[list[Any]] = []
    latency_rows: list[list[Any]] = []
    data: dict[str, Any] = {}
    profile = ""
    with private_redis(scratch / "redis-floor") as server:
        conn = server.client()
        index = build_services(Settings(redis_url=server.url), conn).index
        for label, size, window in cases:
            conn.flushall()
            fill_index(conn, size, window)
            with api_process(server.url) as port:
                api = ApiClient(port)
                status, body = api.post(STATUS_PATH, json.loads(WINDOW))
                assert status == 200 and len(json.loads(body)["response"]) == window

                def via_api(api: ApiClient = api) -> None:
                    assert api.post(STATUS_PATH, json.loads(WINDOW))[0] == 200

                # One request at a time, as the "Status query cost" section measures it.
                budget = 0.5 if smoke else 3.0
                api_sample = repeat(via_api, budget=budget)
                floor_sample = repeat(floor_read(index, window), budget=budget)
                api.close()
                ratio = api_sample.median / floor_sample.median
                latency_rows.append([label, api_sample.ms(), floor_sample.ms(), f"{ratio:.2f}"])
                data[f"{label}/latency"] = {
                    "api": api_sample.times,
                    "floor": floor_sample.times,
                    "ratio": ratio,
                }
                answer = scratch / f"answer-{window}.json"
                answer.write_bytes(body)
                with bare_process(server.url, answer) as bare_port:
                    for clients in (8, 64):
                        ours, bare = [], []
                        for _ in range(rounds):
                            ours.append(
                                wrk(port, STATUS_PATH, WINDOW, connections=clients, seconds=seconds)
                            )
                            bare.append(
                                wrk(
                                    bare_port,
                                    STATUS_PATH,
                                    WINDOW,
                                    connections=clients,
                                    seconds=seconds,
                                )
                            )
                        assert all(r.non_2xx == 0 for r in ours + bare)
                        row = _row(label, len(body), clients, ours, bare)
                        rows.append(row)
                        print(f"  {row}", flush=True)
                        data[f"{label}/{clients}"] = {
                            "ours": [r.__dict__ for r in ours],
                            "bare": [r.__dict__ for r in bare],
                            "ratio": statistics.median(r.rps for r in ours)
                            / statistics.median(r.rps for r in bare),
                        }
            if window == 100:
                profile = poll_profile(server.url, 300 if smoke else 3000)
    header = [
        "case",
        "answer bytes",
        "connections",
        "jobs/status req/s",
        "bare req/s",
        "ratio",
        "jobs/status p50 / p99 (ms)",
        "bare p50 / p99 (ms)",
    ]
    text = "\n\n".join(
        [
            '`POST /v1/toolkit/jobs/status` with `{"since_seconds": 3600}` against **the HTTP '
            "floor**: a bare Flask endpoint (`bench/bare.py`) answering the very bytes the real "
            "one gave, both under gunicorn with the production `gunicorn.conf.py` (2 "
            f"`LingeringGeventWorker` workers), wrk with keep-alive connections, {rounds} "
            f"rounds of {seconds} s alternating the two; median requests/s of the rounds (range), "
            "p50 / p99 of the median round.",
            table(header, rows),
            "The same windows one request at a time (keep-alive client) against **the Redis "
            "floor**, redis-py reading the same answer as `{job_id: status}` strings "
            "(`StatusIndex.window_ids()` and a decode), as the *Status query cost* section "
            "measures it; median (min-max):",
            table(["case", "jobs/status", "Redis floor", "jobs/status / floor"], latency_rows),
            "Where one poll's time goes (100-job window): the app's WSGI callable called "
            "in-process (no gunicorn, no network), timed plain, then under cProfile, each stage "
            "with what it calls (cProfile's own overhead inflates every stage alike):",
            "```\n" + profile.strip() + "\n```",
        ]
    )
    return Section("HTTP floor", text, [], data)


def _row(label: str, size: int, clients: int, ours: list[Any], bare: list[Any]) -> list[Any]:
    ours_rps = statistics.median(r.rps for r in ours)
    bare_rps = statistics.median(r.rps for r in bare)
    mid_ours = sorted(ours, key=lambda r: r.rps)[len(ours) // 2]
    mid_bare = sorted(bare, key=lambda r: r.rps)[len(bare) // 2]
    return [
        label,
        f"{size:,}",
        clients,
        f"{ours_rps:,.0f} ({min(r.rps for r in ours):,.0f}-{max(r.rps for r in ours):,.0f})",
        f"{bare_rps:,.0f} ({min(r.rps for r in bare):,.0f}-{max(r.rps for r in bare):,.0f})",
        f"{ours_rps / bare_rps:.2f}",
        f"{mid_ours.p50_ms:.2f} / {mid_ours.p99_ms:.2f}",
        f"{mid_bare.p50_ms:.2f} / {mid_bare.p99_ms:.2f}",
    ]


@contextmanager
def bare_process(redis_url: str, answer: Path) -> Iterator[int]:
    """Run the bare app under gunicorn, production set-up, answering `answer`; yield its port."""
    port = free_port()
    env = {**service_env(redis_url), "BARE_BODY_FILE": str(answer), "PORT": str(port)}
    proc = Process(
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "bench.bare:create_app()",
        ],
        env,
        name=f"bare-{port}",
    )
    try:
        wait_healthy(proc, port)
        yield port
    finally:
        proc.stop()


# The stages of one poll: (label, file suffix, function name), timed inclusive of what they call.
STAGES = [
    ("whole request (FastPoll: the plain poll, before Flask)", "api/fast_poll.py", "__call__"),
    ("API key check (is_key)", "api/auth.py", "is_key"),
    ("request id (request_id_of)", "api/access.py", "request_id_of"),
    ("body read and parse (body_of)", "api/body.py", "body_of"),
    ("query check (feed.from_body)", "api/feed.py", "from_body"),
    ("index read: one script, fence and ids (StatusIndex.window)", "shared/index.py", "window"),
    ("  of which the pool checkout (get_connection)", "shared/redis.py", "get_connection"),
    ("{id: status} JSON (statuses_json)", "api/encoding.py", "statuses_json"),
    ("envelope and encoding (encode)", "api/encoding.py", "encode"),
    ("log line and metrics (account)", "api/access.py", "account"),
    ("  of which the metrics (observe_request)", "api/request_metrics.py", "observe_request"),
    ("  of which the log line (Logger.info)", "logging/__init__.py", "info"),
]


def poll_profile(redis_url: str, requests: int) -> str:
    """Return where `requests` polls spend their time, stage by stage, in µs per poll."""
    from api import create_app

    # The log lines are written as in production, to a stream nobody reads.
    with contextlib.redirect_stderr(io.StringIO()):
        app = create_app(Settings(redis_url=redis_url, api_key=API_KEY))
        wsgi = app.wsgi_app
        body = WINDOW.encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": STATUS_PATH,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_X_API_KEY": API_KEY,
            "wsgi.url_scheme": "http",
        }

        def poll() -> None:
            env = {**environ, "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO()}
            b"".join(wsgi(env, lambda status, headers, exc_info=None: None))

        for _ in range(100):
            poll()
        started = time.perf_counter()
        for _ in range(requests):
            poll()
        plain = (time.perf_counter() - started) / requests * 1e6
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            poll()
        profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    lines = [f"{requests} polls in-process: {plain:.0f} µs each; under cProfile, µs per poll:"]
    for label, suffix, name in STAGES:
        total = sum(
            row[3]
            for (filename, _, function), row in stats.items()
            if function == name and filename.endswith(suffix)
        )
        lines.append(f"{total / requests * 1e6:8.0f}  {label}")
    return "\n".join(lines)
