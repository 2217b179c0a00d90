"""The toolkit-jobs client: submit jobs, read their status, wait for their end, follow changes.

It speaks HTTP only (httpx), so it runs wherever the service is reachable. Every call has a
timeout; an error answer raises an `ApiError` carrying the server's own message; a refusal that
says when to come back (429, or 503 with `Retry-After`) is retried after that pause.
"""

from __future__ import annotations

import email.utils
import html
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

import httpx

JOBS = "/v1/toolkit/jobs"
JOBS_STATUS = "/v1/toolkit/jobs/status"
JOB_STATUS = "/v1/toolkit/job/status"
JOB_CANCEL = "/v1/toolkit/job/cancel"
JOB_RETRY = "/v1/toolkit/job/retry"

# The server waits at most this long in one status call (`wait`, README "API").
MAX_WAIT_SECONDS = 60.0
# A Retry-After longer than this is waited for this long only: a client should not hang for
# minutes on one header.
MAX_RETRY_AFTER = 60.0
# The pause before retrying a 429 that names none.
DEFAULT_RETRY_AFTER = 1.0
# A tag of an HTML error page, dropped from its text.
TAG = re.compile(r"<[^>]*>")


class Status(StrEnum):
    """A job's status, as the API names it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        """Return whether this status is an end (done, failed or canceled)."""
        return self in ENDS


ENDS = frozenset({Status.DONE, Status.FAILED, Status.CANCELED})


# --- errors ----------------------------------------------------------------------------------


class ToolkitError(Exception):
    """Anything that went wrong talking to the service."""


class TransportError(ToolkitError):
    """No answer came: the service could not be reached, or did not answer in time."""


class ProtocolError(ToolkitError):
    """An answer came that is not what the API answers (not its JSON envelope)."""


class ApiError(ToolkitError):
    """The service answered with an error status; `message` is the server's own words."""

    def __init__(
        self,
        status_code: int,
        message: str,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{message} (HTTP {status_code})")
        self.status_code = status_code
        self.message = message
        self.body = body
        self.retry_after = retry_after


class BadRequestError(ApiError):
    """400: the request was refused as malformed (an unknown task, a bad payload or filter)."""


class UnauthorizedError(ApiError):
    """401: the API key is missing or wrong."""


class NotFoundError(ApiError):
    """404: no such job (or no such route)."""


class ConflictError(ApiError):
    """409: the job is not in a state the action applies to (cancel an ended job, say)."""


class QueueFullError(ApiError):
    """429: the queue stayed at MAX_QUEUE_LENGTH through every retry."""


class ServerError(ApiError):
    """5xx: the service could not serve the request (Redis unavailable, say)."""


class WaitTimeoutError(ToolkitError):
    """The job had not ended when the wait's timeout passed; `last` is its latest status."""

    def __init__(self, job_id: str, timeout: float, last: JobInfo) -> None:
        super().__init__(f"job {job_id} is still {last.status} after waiting {timeout:g} s")
        self.job_id = job_id
        self.timeout = timeout
        self.last = last


ERRORS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    429: QueueFullError,
}


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    """A job the service accepted (202)."""

    job_id: str
    task: str | None
    status: Status
    # Jobs waiting in the queue after this one joined it (None when the server did not say).
    queue_length: int | None
    # The job's status URL (the `Location` header).
    location: str | None
    # True when a named submission was seen before and this is its job (`Idempotent-Replayed`).
    replayed: bool


@dataclass(frozen=True)
class JobInfo:
    """One job's status and details; `raw` is the description exactly as the API sent it."""

    job_id: str
    status: Status
    queue: str | None
    task: str | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    progress: float | None
    result: Any
    error: str | None
    webhook: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """Return whether the job has ended (done, failed or canceled)."""
        return self.status.ended


@dataclass(frozen=True)
class Page:
    """One answer of the change feed: {job_id: status} in the order of their latest change."""

    changes: dict[str, Status]
    # Where to continue from, or None when the page reached server_time.
    next_cursor: str | None
    # The Redis time of the read (seconds since the epoch): `since` for the next query.
    server_time: float
    counts: dict[str, int] | None
    queue_length: int | None


@dataclass(frozen=True)
class Change:
    """One job's latest status as a page of the change feed listed it."""

    job_id: str
    status: Status
    # The server_time of the read that listed it: the change happened at or before it.
    server_time: float


# --- the client ------------------------------------------------------------------------------


class Client:
    """A client of one toolkit-jobs service, identified by its API key."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url,
            headers={"x-api-key": api_key, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this client holds."""
        self._http.close()

    # --- jobs ---

    def submit(
        self,
        task: str,
        payload: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> Submitted:
        """Submit a job of `task` with `payload`; return what the service accepted."""
        body: dict[str, Any] = {"task": task, "payload": payload if payload is not None else {}}
        if job_id is not None:
            body["job_id"] = job_id
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        # A 503 may come after the job was enqueued (Redis answered too late): only a named
        # submission, which never runs twice, is sent again. A 429 enqueued nothing.
        named = job_id is not None or idempotency_key is not None
        answer, envelope = self._post(JOBS, body, headers=headers, retry_unavailable=named)
        response = _object(envelope.get("response"), "response")
        job_id = response.get("job_id") or envelope.get("job_id")
        status = response.get("job_status", Status.QUEUED)
        if not isinstance(job_id, str) or status not in set(Status):
            raise ProtocolError("the answer to a submission names no job id and status")
        return Submitted(
            job_id=job_id,
            task=response.get("task"),
            status=Status(status),
            queue_length=_optional_int(envelope.get("queue_length")),
            location=answer.headers.get("Location"),
            replayed=answer.headers.get("Idempotent-Replayed", "").lower() == "true",
        )

    def status(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """Return the job's status; with `wait` (0 to 60 s), as soon as it ends or the wait is
        over."""
        body: dict[str, Any] = {"job_id": job_id}
        timeout = self.timeout
        if wait is not None:
            body["wait"] = wait
            timeout += wait
        _, envelope = self._post(JOB_STATUS, body, timeout=timeout)
        return job_info(_object(envelope.get("response"), "response"))

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """Return the job's status once it has ended; raise WaitTimeoutError after `timeout` s."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            info = self.status(job_id, wait=max(0.0, min(MAX_WAIT_SECONDS, left)))
            if info.ended:
                return info
            if timeout is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job_id, timeout, info)

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a waiting job or stop a running one; return its status after the request."""
        # Not sent again after a 503: the cancel may have gone through (Redis answered late).
        _, envelope = self._post(JOB_CANCEL, {"job_id": job_id}, retry_unavailable=False)
        return job_info(_object(envelope.get("response"), "response"))

    def retry(self, job_id: str) -> JobInfo:
        """Queue a failed or canceled job again under the same id; return its status."""
        # Not sent again after a 503: the retry may have gone through, and would run it twice.
        _, envelope = self._post(JOB_RETRY, {"job_id": job_id}, retry_unavailable=False)
        return job_info(_object(envelope.get("response"), "response"))

    # --- the change feed (docs/changes-feed.md) ---

    def changes(
        self,
        *,
        since: float | None = None,
        since_seconds: float | None = None,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        counts: bool = False,
    ) -> Page:
        """Return one page of the jobs whose latest change matches the query."""
        body: dict[str, Any] = {}
        if since is not None:
            body["since"] = since
        if since_seconds is not None:
            body["since_seconds"] = since_seconds
        if status is not None:
            body["status"] = _statuses(status)
        if queue is not None:
            body["queue"] = queue
        if task is not None:
            body["task"] = task
        if limit is not None:
            body["limit"] = limit
        if cursor is not None:
            body["cursor"] = cursor
        if counts:
            body["counts"] = True
        _, envelope = self._post(JOBS_STATUS, body)
        return page(envelope)

    def pages(
        self,
        *,
        since: float | None = None,
        since_seconds: float | None = None,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        follow: bool = False,
        interval: float = 2.0,
        on_error: Callable[[ToolkitError], None] | None = None,
    ) -> Iterator[Page]:
        """Yield the pages of the query, following next_cursor until it is null; with `follow`,
        go on forever: `interval` s after each caught-up page, ask again since its server_time.

        Following, a page that cannot be read (no answer, a 5xx) is asked for again after
        `interval` s, from the same cursor or `since`, and `on_error` is told; a 4xx raises.
        """
        filters: dict[str, Any] = {"status": status, "queue": queue, "task": task}

        def read(**query: Any) -> Page:
            while True:
                try:
                    return self.changes(limit=limit, **query)
                except (TransportError, ServerError) as exc:
                    if not follow:
                        raise
                    if on_error is not None:
                        on_error(exc)
                    self._sleep(interval)

        current = read(since=since, since_seconds=since_seconds, **filters)
        while True:
            yield current
            if current.next_cursor is not None:
                # The cursor holds the filters: sending them again could only disagree.
                current = read(cursor=current.next_cursor)
            elif follow:
                self._sleep(interval)
                current = read(since=current.server_time, **filters)
            else:
                return

    def iter_changes(
        self,
        *,
        since: float | None = None,
        since_seconds: float | None = None,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> Iterator[Change]:
        """Yield every change the query covers, page by page, up to the latest server_time."""
        for each in self.pages(
            since=since,
            since_seconds=since_seconds,
            status=status,
            queue=queue,
            task=task,
            limit=limit,
        ):
            yield from _changes_of(each)

    def follow(
        self,
        *,
        since: float | None = None,
        since_seconds: float | None = None,
        status: str | Iterable[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        interval: float = 2.0,
    ) -> Iterator[Change]:
        """Yield every change from the start on, forever, asking again every `interval` s."""
        for each in self.pages(
            since=since,
            since_seconds=since_seconds,
            status=status,
            queue=queue,
            task=task,
            limit=limit,
            follow=True,
            interval=interval,
        ):
            yield from _changes_of(each)

    # --- HTTP ---

    def _post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        retry_unavailable: bool = True,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """POST `body`, retrying refusals that name a pause (a 503 only if `retry_unavailable`);
        return the answer and its envelope."""
        attempt = 0
        while True:
            answer = self._send(path, body, headers or {}, timeout or self.timeout)
            if answer.is_success:
                return answer, _envelope(answer)
            error = api_error(answer)
            unsafe = error.status_code == 503 and not retry_unavailable
            if error.retry_after is None or unsafe or attempt >= self.max_retries:
                raise error
            attempt += 1
            self._sleep(error.retry_after)

    def _send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float
    ) -> httpx.Response:
        try:
            return self._http.post(path, json=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            raise TransportError(
                f"no answer from {self.url} within {timeout:g} s ({path})"
            ) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.url}: {_reason(exc)}") from exc


# --- decoding answers (pure) -----------------------------------------------------------------


def job_info(described: dict[str, Any]) -> JobInfo:
    """Return the JobInfo of a job description of the API; ProtocolError if it is none."""
    try:
        return _job_info(described)
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"the answer is not a job description ({exc!r})") from None


def _job_info(described: dict[str, Any]) -> JobInfo:
    webhook = described.get("webhook")
    progress = described.get("progress")
    return JobInfo(
        job_id=str(described["job_id"]),
        status=Status(described["job_status"]),
        queue=described.get("queue"),
        task=described.get("task"),
        created_at=_moment(described.get("created_at")),
        started_at=_moment(described.get("started_at")),
        ended_at=_moment(described.get("ended_at")),
        progress=progress if isinstance(progress, int | float) else None,
        result=described.get("result"),
        error=described.get("error"),
        webhook=webhook if isinstance(webhook, dict) else None,
        raw=described,
    )


def page(envelope: dict[str, Any]) -> Page:
    """Return the Page of a change-feed envelope; ProtocolError if it is none."""
    try:
        return _page(envelope)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"the answer is not a page of changes ({exc!r})") from None


def _page(envelope: dict[str, Any]) -> Page:
    server_time = envelope.get("server_time")
    if not isinstance(server_time, int | float):
        raise ProtocolError("the answer has no server_time: the server predates the change feed")
    counts = envelope.get("counts")
    return Page(
        changes={
            str(job_id): Status(status)
            for job_id, status in _object(envelope.get("response"), "response").items()
        },
        next_cursor=envelope.get("next_cursor"),
        server_time=float(server_time),
        counts={str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else None,
        queue_length=_optional_int(envelope.get("queue_length")),
    )


def api_error(answer: httpx.Response) -> ApiError:
    """Return the exception for an error answer, with the server's message when it sent one."""
    code = answer.status_code
    body: Any
    try:
        body = answer.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = answer.text
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        message = body["message"]
    else:
        # Not our envelope (a proxy's page, gunicorn's own refusal): say what came, as text.
        snippet = " ".join(html.unescape(TAG.sub(" ", str(body))).split())[:200]
        message = f"{answer.reason_phrase or 'error'}" + (f": {snippet}" if snippet else "")
    retry_after = _retry_after(answer)
    if code >= 500:
        kind: type[ApiError] = ServerError
    else:
        kind = ERRORS.get(code, ApiError)
    return kind(code, message, body, retry_after)


def _retry_after(answer: httpx.Response) -> float | None:
    """Return the pause a retryable refusal asks for (429, or 503 with Retry-After), capped."""
    header = answer.headers.get("Retry-After")
    if answer.status_code == 429 and header is None:
        return DEFAULT_RETRY_AFTER
    if answer.status_code not in (429, 503) or header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _envelope(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError(
            f"HTTP {answer.status_code} from {answer.request.url} is not JSON: "
            f"{answer.text[:200]!r}"
        ) from None
    return _object(body, "answer")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} is not a JSON object: {value!r:.200}")
    return value


def _statuses(status: str | Iterable[str]) -> list[str]:
    wanted = [status] if isinstance(status, str) else list(status)
    return [Status(each).value for each in wanted]


def _changes_of(each: Page) -> Iterator[Change]:
    for job_id, status in each.changes.items():
        yield Change(job_id, status, each.server_time)


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value)


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused (is the service running there?)"
    return text
