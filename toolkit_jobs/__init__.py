"""The Python client of toolkit-jobs: submit jobs, read and wait for their status, follow the
change feed. It speaks HTTP only; `toolkit-jobs` (toolkit_jobs.cli) is its command line."""

from __future__ import annotations

from toolkit_jobs.client import (
    ApiError,
    BadRequestError,
    Change,
    Client,
    ConflictError,
    JobInfo,
    NotFoundError,
    Page,
    ProtocolError,
    QueueFullError,
    ServerError,
    Status,
    Submitted,
    ToolkitError,
    TransportError,
    UnauthorizedError,
    WaitTimeoutError,
)

__all__ = [
    "ApiError",
    "BadRequestError",
    "Change",
    "Client",
    "ConflictError",
    "JobInfo",
    "NotFoundError",
    "Page",
    "ProtocolError",
    "QueueFullError",
    "ServerError",
    "Status",
    "Submitted",
    "ToolkitError",
    "TransportError",
    "UnauthorizedError",
    "WaitTimeoutError",
]
