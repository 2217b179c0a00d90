"""Pure validation of request bodies: each function returns clean values or raises ApiError."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from api.errors import ApiError

DEFAULT_SINCE_SECONDS = 600
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Deeper documents are refused: RQ pickles payloads recursively, and no real payload nests so.
MAX_JSON_DEPTH = 64
TASK_NAME_MAX = 100
MAX_WAIT_SECONDS = 60
# The IETF httpapi draft's key: a string, here any printable ASCII, at most this long.
IDEMPOTENCY_KEY_MAX = 255
WEBHOOK_URL_MAX = 2048


def parse_body(raw: bytes) -> dict[str, Any]:
    """Return the JSON object in `raw`; an empty body is `{}`."""
    if not raw.strip():
        return {}
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess UTF-16 and -32.
        body = json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8") from None
    except NonFiniteNumberError as exc:
        raise ApiError(400, f"Request body holds a number out of range: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"Request body is not valid JSON: {_short(exc)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"Request body must be a JSON object, not {json_type(body)}")
    # Each level opens with a bracket: a body with few brackets cannot nest deep (the walk
    # costs a poll's tiny body more than its parse).
    brackets = raw.count(b"{") + raw.count(b"[")
    if brackets > MAX_JSON_DEPTH and _nesting_depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"Request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


class NonFiniteNumberError(ValueError):
    """A JSON number too large for a float (1e999): it would come back as null."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumberError(f"{text[:40]} (numbers must be finite)")
    return value


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: echoing them back would break strict clients' parsers.
    raise ValueError(f"{name} is not a valid JSON value")


def _nesting_depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def since_seconds(body: dict[str, Any], retention_seconds: int) -> float:
    """Return the window length from `body`, defaulting to 600 seconds."""
    if "since_seconds" not in body:
        return DEFAULT_SINCE_SECONDS
    value = body["since_seconds"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"since_seconds must be a number, not {json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, "since_seconds must be a finite number")
    if value < 0:
        raise ApiError(400, "since_seconds must be >= 0")
    if value > retention_seconds:
        raise ApiError(
            400,
            f"since_seconds must be at most {retention_seconds} (the index keeps job states "
            f"for {retention_seconds} seconds)",
        )
    return float(value)


def job_id(body: dict[str, Any]) -> str:
    """Return a well-formed job id from `body` (RQ's rule: [A-Za-z0-9_-], 1 to 128 chars)."""
    if "job_id" not in body:
        raise ApiError(400, "job_id is required")
    value = body["job_id"]
    if not isinstance(value, str):
        raise ApiError(400, f"job_id must be a string, not {json_type(value)}")
    if not JOB_ID_RE.fullmatch(value):
        raise ApiError(400, "job_id must be 1 to 128 characters of A-Z a-z 0-9 _ -")
    return value


def wait_seconds(value: Any) -> float:
    """Return how long a status request may wait for the job's end: 0 to 60 seconds."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"wait must be a number of seconds, not {json_type(value)}")
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise ApiError(400, f"wait must be between 0 and {MAX_WAIT_SECONDS} seconds")
    return float(value)


def wait_query(raw: str | None) -> float:
    """Return the `wait` of a query string (seconds, 0 to 60)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "wait must be a number of seconds") from None
    if not math.isfinite(value):
        raise ApiError(400, f"wait must be between 0 and {MAX_WAIT_SECONDS} seconds")
    return wait_seconds(value)


def idempotency_key(value: str | None) -> str | None:
    """Return the Idempotency-Key header's key: printable ASCII, 1 to 255 characters."""
    if value is None:
        return None
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX or not all(" " <= ch <= "~" for ch in value):
        raise ApiError(
            400,
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
        )
    return value


@dataclass(frozen=True)
class JobRequest:
    """A well-formed request for a job (the task name is not yet checked against the catalog)."""

    task: str
    payload: dict[str, Any]
    webhook_url: str | None
    # The job id the client chose (body `job_id`), or None for one of RQ's.
    job_id: str | None = None


def job_request(body: dict[str, Any]) -> JobRequest:
    """Return the task, payload and webhook URL of a job request body."""
    task = body.get("task")
    if not isinstance(task, str) or not task:
        raise ApiError(400, "task is required and must be a string")
    if len(task) > TASK_NAME_MAX:
        raise ApiError(400, f"task must be at most {TASK_NAME_MAX} characters")
    payload = body.get("payload", {})
    if not isinstance(payload, dict):
        raise ApiError(400, f"payload must be a JSON object, not {json_type(payload)}")
    url = body.get("webhook_url")
    if url is not None:
        url = webhook_url(url)
    chosen = job_id(body) if "job_id" in body else None
    return JobRequest(task=task, payload=payload, webhook_url=url, job_id=chosen)


def webhook_url(value: Any) -> str:
    """Return `value` if it is an absolute http(s) URL with a host."""
    if not isinstance(value, str):
        raise ApiError(400, f"webhook_url must be a string, not {json_type(value)}")
    if len(value) > WEBHOOK_URL_MAX:
        raise ApiError(400, f"webhook_url must be at most {WEBHOOK_URL_MAX} characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ApiError(400, "webhook_url is not a valid URL") from None
    if port == 0:
        raise ApiError(400, "webhook_url must not use port 0")
    if "\\" in value:
        # Browsers' URL parsers read a backslash as a slash, Python's does not: refuse a URL
        # whose host two clients could read differently.
        raise ApiError(400, "webhook_url must not contain a backslash")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "webhook_url must be an http:// or https:// URL with a host")
    if any(ch.isspace() for ch in value):
        raise ApiError(400, "webhook_url must not contain white space")
    if not all("!" <= ch <= "~" for ch in value):
        # What HTTP sends as is: a non-ASCII host or path must come encoded (punycode, %XX).
        raise ApiError(
            400,
            "webhook_url must be printable ASCII: encode a non-ASCII host as punycode and a path "
            "with %XX escapes",
        )
    return value


def json_type(value: Any) -> str:
    """Return how an error message names the JSON type of `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
