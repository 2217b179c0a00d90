"""A small standard-library HTTP client for the end-to-end tests (127.0.0.1 only)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any

from tests.support import API_KEY, Process, wait_until

HOST = "127.0.0.1"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, headers (lower-case names), decoded JSON body, seconds taken."""

    status: int
    headers: dict[str, str]
    body: Any
    elapsed: float
    content_type: str


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = API_KEY,
    content_type: str = "application/json",
    timeout: float = TIMEOUT,
) -> Reply:
    """Send one request (`body` as JSON) to 127.0.0.1:`port` and return its decoded answer."""
    headers = {"Accept": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.monotonic() - started
        content_type = resp.getheader("Content-Type", "")
        answer_headers = {name.lower(): value for name, value in resp.getheaders()}
        status = resp.status
    finally:
        conn.close()
    decoded = json.loads(raw) if content_type.startswith("application/json") else raw
    return Reply(status, answer_headers, decoded, elapsed, content_type)


def submit(port: int, task: str, payload: dict[str, Any], **extra: Any) -> Reply:
    """Submit a job of `task` with `payload`."""
    return call(port, "POST", "/v1/toolkit/jobs", {"task": task, "payload": payload, **extra})


def submit_ok(port: int, task: str, payload: dict[str, Any]) -> str:
    """Submit a job, assert it was accepted with 202, and return its id."""
    reply = submit(port, task, payload)
    assert reply.status == 202, reply.body
    job_id: str = reply.body["job_id"]
    return job_id


def job_status(port: int, job_id: str) -> Reply:
    """Return the answer of POST /v1/toolkit/job/status for `job_id`."""
    return call(port, "POST", "/v1/toolkit/job/status", {"job_id": job_id})


def jobs_status(port: int, since_seconds: float = 600) -> Reply:
    """Return the answer of POST /v1/toolkit/jobs/status over the last `since_seconds`."""
    return call(port, "POST", "/v1/toolkit/jobs/status", {"since_seconds": since_seconds})


def wait_finished(port: int, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll one job until it is done or failed; return its description."""

    def finished() -> dict[str, Any] | None:
        reply = job_status(port, job_id)
        assert reply.status == 200, reply.body
        described: dict[str, Any] = reply.body["response"]
        return described if described["job_status"] in ("done", "failed") else None

    return wait_until(finished, timeout=timeout, interval=0.1)


def wait_healthy(proc: Process, port: int, timeout: float = 30) -> None:
    """Wait until `proc` answers 200 on /health at 127.0.0.1:`port`, failing if it exits."""

    def healthy() -> bool:
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.output()}"
        try:
            return call(port, "GET", "/health", key=None, timeout=2).status == 200
        except OSError:
            return False

    wait_until(healthy, timeout=timeout, interval=0.1)
