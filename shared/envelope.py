"""The No-Code Architects Toolkit response envelope, built from plain values."""

from __future__ import annotations

from typing import Any


def envelope(
    *,
    code: int,
    message: str,
    id: Any = None,
    job_id: str | None = None,
    response: Any = None,
    run_time: float,
    queue_time: float = 0.0,
    pid: int,
    queue_id: str,
    queue_length: int | None,
    build_number: str,
    **extra: Any,
) -> dict[str, Any]:
    """Return the envelope dict; `extra` fields ride along after the standard ones."""
    return {
        "code": code,
        "id": id,
        "job_id": job_id,
        "response": response,
        "message": message,
        "run_time": round(run_time, 4),
        "queue_time": round(queue_time, 4),
        "total_time": round(queue_time + run_time, 4),
        "pid": pid,
        "queue_id": queue_id,
        "queue_length": queue_length,
        "build_number": build_number,
        **extra,
    }
