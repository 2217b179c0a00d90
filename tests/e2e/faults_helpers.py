"""Helpers for the fault-injection tests: killing workers outright, reading Redis-side state."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from rq import Worker
from rq.job import Job

from shared.status import Status
from tests.support import Process, indexed, service_env, wait_until

RETENTION_SECONDS = 7 * 24 * 60 * 60


def default_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Return a service environment that leaves MAINTENANCE_INTERVAL at the service default."""
    env = service_env(redis_url, **overrides)
    del env["MAINTENANCE_INTERVAL"]
    return env


def worker_argv(clock_offset: str | None = None) -> list[str]:
    """Return the argv of `python -m worker`, under `faketime -f OFFSET` when one is given."""
    argv = [sys.executable, "-m", "worker"]
    if clock_offset is None:
        return argv
    # Both clocks are shifted: with --exclude-monotonic, libfaketime 0.9.10 still shifts the
    # deadline of clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), and time.sleep() fails with
    # EINVAL. Shifted, a lock's timeout never comes instead (sem_clockwait() is not translated),
    # which only hangs the worker's last step on shutdown: see `running_tree`'s `grace`.
    return ["faketime", "-f", clock_offset, *argv]


def start_skewed_worker(env: dict[str, str], clock_offset: str, name: str) -> Process:
    """Start a worker whose clock is off by `clock_offset` (faketime syntax, e.g. "+7m")."""
    return Process(worker_argv(clock_offset), env, name=name)


def child_pids(pid: int) -> list[int]:
    """Return the live processes whose parent is `pid`, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name, in parentheses, may hold spaces: the fields after it are fixed.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            children.append(int(entry.name))
    return children


def kill_outright(proc: Process) -> float:
    """SIGKILL a forking worker and its work-horse, as a power cut would; return when (monotonic).

    RQ's work-horse calls setpgrp(), so killing the worker's process group does not reach it:
    a horse left alive would finish the job itself. The worker goes first, so that nothing is
    left to notice the horse's death and fail the job the ordinary way.
    """
    horses = child_pids(proc.popen.pid)
    os.killpg(proc.popen.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for horse in horses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    return killed_at


def descendant_pids(pid: int) -> list[int]:
    """Return the live descendants of `pid` (children first)."""
    found, frontier = [], [pid]
    while frontier:
        children = [child for parent in frontier for child in child_pids(parent)]
        found.extend(children)
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def running_tree(*workers: Process, grace: float = 10) -> Iterator[None]:
    """Like `running`, but end every descendant too: RQ's work-horses and faketime's child.

    A horse leads a process group of its own, so stopping the worker's group misses it; and a
    warm shutdown would wait for the horse's job. Horses are killed first, then the worker is
    stopped, then whatever of its tree lingers after `grace` seconds is killed.
    """
    try:
        yield
    finally:
        for proc in workers:
            tree = descendant_pids(proc.popen.pid) if proc.popen.poll() is None else []
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(pid) != proc.popen.pid:
                        os.kill(pid, signal.SIGKILL)
            proc.stop()
            try:
                wait_until(lambda tree=tree: not any(map(_alive, tree)), timeout=grace)
            except AssertionError:
                for pid in filter(_alive, tree):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def redis_now(conn: redis.Redis) -> float:
    """Return the Redis server's clock, in seconds."""
    seconds, micros = conn.time()
    return float(seconds) + micros / 1_000_000


def index_entry(conn: redis.Redis, job_id: str) -> tuple[Status, int] | None:
    """Return the job's status in the index and its score (µs of Redis time), if indexed."""
    return indexed(conn, job_id)


def index_status(conn: redis.Redis, job_id: str) -> Status | None:
    """Return the job's status in the index, if indexed."""
    entry = index_entry(conn, job_id)
    return entry[0] if entry is not None else None


def worker_running(conn: redis.Redis, job_id: str, workers: list[Process]) -> Process:
    """Return the one of `workers` whose RQ worker has taken `job_id`."""
    name = Job.fetch(job_id, connection=conn).worker_name
    pids = {w.name: w.pid for w in Worker.all(connection=conn)}
    assert name in pids, f"job {job_id} names worker {name!r}, not one of {sorted(pids)}"
    matches = [proc for proc in workers if proc.popen.pid == pids[name]]
    assert len(matches) == 1, f"no started process has pid {pids[name]}"
    return matches[0]
