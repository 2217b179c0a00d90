"""Helpers for worker tests that watch real worker processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from rq.job import JobStatus

from shared.status import Status
from tests.support import Process, wait_until

# What a test sees of a job: (its status in the index, RQ's own status).
Observed = tuple[Status | None, JobStatus]


def children(pid: int) -> list[int]:
    """Return the ids of the live child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def kill_children(proc: Process) -> None:
    """SIGKILL the children of `proc` (a forking worker's work-horse has its own group)."""
    for child in children(proc.popen.pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            continue


def wait_for(proc: Process, predicate: Callable[[], object], timeout: float = 10.0) -> object:
    """Return the first truthy `predicate()` while `proc` stays alive; else fail with its log."""

    def check() -> object:
        assert proc.popen.poll() is None, f"{proc.name} exited early"
        return predicate()

    try:
        return wait_until(check, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {proc.name} log ---\n{proc.output()}") from None
