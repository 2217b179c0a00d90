"""The design this service replaces: one JSON status file per job, filtered by mtime."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def write(directory: Path, statuses: dict[str, tuple[str, float]]) -> None:
    """Write one `<job_id>.json` per job, its mtime set to when its state changed."""
    directory.mkdir(parents=True, exist_ok=True)
    for job_id, (status, changed_at) in statuses.items():
        path = directory / f"{job_id}.json"
        path.write_text(json.dumps({"job_id": job_id, "job_status": status}))
        os.utime(path, (changed_at, changed_at))


def changed_since(directory: Path, since_seconds: float) -> dict[str, str]:
    """Return {job_id: status} of the files modified in the last `since_seconds`."""
    cutoff = time.time() - since_seconds
    found: dict[str, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.stat().st_mtime >= cutoff:
                with open(entry.path, "rb") as handle:
                    record = json.load(handle)
                found[record["job_id"]] = record["job_status"]
    return found
