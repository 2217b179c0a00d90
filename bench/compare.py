"""Poll cost of this tree's API against another revision's, side by side on one Redis.

`python -m bench.compare REV` checks REV out into a temporary git worktree, serves both trees'
APIs with the same gunicorn set-up (each tree's own gunicorn.conf.py) against one private Redis
holding an index of `--size` jobs, and times `POST /v1/toolkit/jobs/status` over a window of
`--window` jobs from each, in alternating rounds, beside redis-py's floor. For a change that
should not move the request path (a refactoring), the two columns should agree within noise.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import ROOT, ApiClient, fill_index, keep_logs, private_redis, repeat, table
from shared.settings import Settings
from shared.wiring import build_services
from tests.helpers import BIN, free_port, service_env

STATUS_PATH = "/v1/toolkit/jobs/status"
# Between the recent entries (< 60 s old) and the old ones (> 2 h old): matches exactly the recent.
WINDOW_SECONDS = 3600


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """Check `rev` out into a temporary git worktree; remove it afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False
            )


@contextmanager
def api_from(tree: Path, redis_url: str, log: Path) -> Iterator[int]:
    """Serve `tree`'s API under gunicorn (2 workers) on a free port; yield the port."""
    port = free_port()
    env = service_env(redis_url, PORT=str(port), LOG_LEVEL="WARNING", PYTHONPATH=str(tree))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "api:create_app()"],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(proc, port, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log.read_text(errors='replace')}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer /health within 30 s:\n{log.read_text()}")


def main() -> None:
    """Time both trees' polls in alternating rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the git revision to compare this tree with")
    parser.add_argument("--size", type=int, default=1_000_000, help="jobs in the index")
    parser.add_argument("--window", type=int, default=10_000, help="jobs in the window")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per sample")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp, worktree(args.rev) as other:
        scratch = Path(tmp)
        with private_redis(scratch / "redis") as server:
            conn = server.client()
            fill_index(conn, args.size, args.window)
            index = build_services(Settings(redis_url=server.url), conn).index
            with (
                api_from(other, server.url, scratch / "other.log") as other_port,
                api_from(ROOT, server.url, scratch / "this.log") as this_port,
            ):
                clients = {args.rev: ApiClient(other_port), "this tree": ApiClient(this_port)}

                def poll(client: ApiClient) -> Callable[[], None]:
                    def once() -> None:
                        status, body = client.post(STATUS_PATH, {"since_seconds": WINDOW_SECONDS})
                        assert status == 200, body[:200]

                    return once

                def floor() -> None:
                    ids = index.window_ids(WINDOW_SECONDS, "default").ids
                    answer = {job_id.decode(): s for s, members in ids for job_id in members}
                    assert len(answer) == args.window

                medians: dict[str, list[float]] = {name: [] for name in [*clients, "floor"]}
                for round_ in range(args.rounds):
                    # Alternate which tree goes first, so drift favours neither.
                    order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                    for name in order:
                        sample = repeat(poll(clients[name]), max_runs=400, budget=args.budget)
                        medians[name].append(sample.median * 1000)
                    sample = repeat(floor, max_runs=400, budget=args.budget)
                    medians["floor"].append(sample.median * 1000)
                    print(
                        f"  round {round_ + 1}: "
                        + ", ".join(
                            f"{name} {values[-1]:.3f} ms" for name, values in medians.items()
                        ),
                        flush=True,
                    )
                for client in clients.values():
                    client.close()
    floor_ms = statistics.median(medians["floor"])
    rows = [
        [
            name,
            f"{statistics.median(values):.3f}",
            f"{min(values):.3f}-{max(values):.3f}",
            f"{statistics.median(values) / floor_ms:.2f}",
        ]
        for name, values in medians.items()
    ]
    print(
        f"\n{args.size:,}-job index, {args.window:,}-job window, {args.rounds} alternating "
        f"rounds of {args.budget:.0f} s per sample; median of the round medians:\n"
    )
    print(table(["API", "ms per poll", "round medians", "/ floor"], rows))


if __name__ == "__main__":
    keep_logs()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
