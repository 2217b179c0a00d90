"""The parts of the OpenAPI description that operations share: the envelope and the other
schemas, the headers, the error answers (`api/openapi_spec.py` assembles the document).

What the code decides (the job id alphabet, the statuses, the change feed's bounds) is read from
the modules that decide it, and what a deployment decides (the retention, the body limit) from
its settings, so the description cannot drift from either.
"""

from __future__ import annotations

from typing import Any

from api import feed, validation
from api.auth import API_KEY_HEADER
from shared.settings import Settings
from shared.status import Status

Schema = dict[str, Any]

JSON = "application/json"
DELIVERY_STATES = (
    "waiting",
    "pending",
    "delivering",
    "retrying",
    "delivered",
    "gave_up",
    "gone",
    "refused",
)

# `status=failed&status=canceled`; the service also reads `status=failed,canceled`.
STATUS_QUERY: Schema = {"style": "form", "explode": True}

NULL: Schema = {"type": "null"}
STRING: Schema = {"type": "string"}
JOB_ID: Schema = {
    "type": "string",
    "pattern": f"^{validation.JOB_ID_RE.pattern}$",
    "description": "A job id: 1 to 128 characters of A-Z a-z 0-9 _ -.",
    "examples": ["6f1c2d0e-4b7a-4a55-9d7e-0c2b5d1e9a10"],
}
CLIENT_ID: Schema = {
    "description": "Any JSON value of the client's own: the answer's envelope echoes it as `id`."
}
TIME: Schema = {
    "type": ["string", "null"],
    "format": "date-time",
    "description": "ISO 8601, UTC, milliseconds (`2026-11-30T13:00:06.035Z`).",
}


def ref(kind: str, name: str) -> Schema:
    """Return a reference to the component `name` of `kind` (schemas, responses, ...)."""
    return {"$ref": f"#/components/{kind}/{name}"}


def without_description(schema: Schema) -> Schema:
    """Return `schema` without its description (which a parameter carries instead)."""
    return {key: value for key, value in schema.items() if key != "description"}


def answer(
    description: str,
    code: int,
    *,
    response: Schema = NULL,
    message: Schema = STRING,
    job_id: Schema = NULL,
    queue_length: Schema | None = None,
    extra: dict[str, Schema] | None = None,
    required: tuple[str, ...] = (),
    headers: tuple[str, ...] = (),
) -> Schema:
    """Return a JSON answer: the envelope with HTTP status `code`, its fields narrowed so, plus
    the top-level `extra` fields (those in `required` always present)."""
    properties: dict[str, Schema] = {
        "code": {"const": code},
        "response": response,
        "message": message,
        "job_id": job_id,
        **(extra or {}),
    }
    if queue_length is not None:
        properties["queue_length"] = queue_length
    elif 400 <= code < 500:
        # A refusal (4xx) does not wait on Redis for the queue length (429 says it).
        properties["queue_length"] = NULL
    schema: Schema = {
        "allOf": [ref("schemas", "Envelope")],
        "properties": properties,
        "unevaluatedProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return {
        "description": description,
        "headers": {name: ref("headers", name) for name in ("X-Request-ID", *headers)},
        "content": {JSON: {"schema": schema}},
    }


def components(settings: Settings) -> Schema:
    """Return the description's shared components for a service with `settings`."""
    status: Schema = {"type": "string", "enum": [s.value for s in Status]}
    return {
        "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The same API key as a Bearer token (`/health` and `/metrics`).",
            },
        },
        "headers": {
            "X-Request-ID": {
                "description": "The request's id, as in the log line: the caller's own when it "
                "sent a short plain one (`[A-Za-z0-9._-]{1,64}`), else a new one.",
                "required": True,
                "schema": STRING,
            },
            "Retry-After": {
                "description": "Seconds to wait before asking again.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            },
            "Location": {
                "description": "The job's status URL (`GET /v1/toolkit/job/status?job_id=...`).",
                "required": True,
                "schema": {"type": "string", "format": "uri-reference"},
            },
            "Idempotent-Replayed": {
                "description": "Present on the answer to a named submission seen before.",
                "required": False,
                "schema": {"type": "string", "const": "true"},
            },
        },
        "schemas": {
            "Envelope": _envelope(),
            "Status": status,
            "JobDescription": _job_description(),
            "DeliveryState": _delivery_state(),
            "Counts": {
                "type": "object",
                "description": "Jobs per status whose latest change lies in the query's window.",
                "propertyNames": status,
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "ChangesQuery": _changes_query(settings),
        },
        "responses": _errors(settings),
    }


def _envelope() -> Schema:
    time: Schema = {"type": "number", "minimum": 0}
    fields: dict[str, Schema] = {
        "code": {"type": "integer", "description": "The HTTP status."},
        "id": {"description": "The `id` of the request body, else null."},
        "job_id": {"type": ["string", "null"]},
        "response": {"description": "The answer itself: its shape depends on the endpoint."},
        "message": {"type": "string", "minLength": 1},
        "run_time": time,
        "queue_time": time,
        "total_time": time,
        "pid": {"type": "integer", "minimum": 1},
        "queue_id": {"type": "string", "description": "The RQ queue of the service's jobs."},
        "queue_length": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "Jobs waiting; null when Redis is unreachable and on refusals "
            "other than 429.",
        },
        "build_number": {"type": "string"},
    }
    return {
        "type": "object",
        "description": "The No-Code Architects Toolkit envelope every answer carries.",
        "required": list(fields),
        "properties": fields,
    }


def _job_description() -> Schema:
    status = ref("schemas", "Status")
    fields: dict[str, Schema] = {
        "job_id": JOB_ID,
        "job_status": status,
        "queue": STRING,
        "task": {"type": ["string", "null"]},
        "created_at": TIME,
        "started_at": TIME,
        "ended_at": TIME,
        "progress": {"type": "number", "minimum": 0, "maximum": 100},
        "result": {"description": "What the task returned (a done job only)."},
        "error": {
            "type": ["string", "null"],
            "description": "The last line of the traceback (a failed job only).",
        },
        "webhook": ref("schemas", "DeliveryState"),
    }

    def when(value: str, field: str) -> Schema:
        return {
            "if": {"properties": {"job_status": {"const": value}}},
            "then": {"required": [field]},
            "else": {"not": {"required": [field]}},
        }

    return {
        "type": "object",
        "required": [name for name in fields if name not in ("result", "error", "webhook")],
        "properties": fields,
        "additionalProperties": False,
        "allOf": [when(Status.DONE, "result"), when(Status.FAILED, "error")],
        "description": "One job. `webhook` is there for a job submitted with a `webhook_url`.",
    }


def _delivery_state() -> Schema:
    fields: dict[str, Schema] = {
        "state": {"type": "string", "enum": list(DELIVERY_STATES)},
        "attempts": {"type": "integer", "minimum": 0},
        "last_status": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "delivered_at": TIME,
        "next_attempt_at": TIME,
    }
    return {
        "type": "object",
        "description": "The delivery of the job's latest end to its webhook (docs/webhooks.md).",
        "required": list(fields),
        "properties": fields,
        "additionalProperties": False,
    }


def _changes_query(settings: Settings) -> Schema:
    fields = changes_fields(settings)
    listed = fields["status"]
    fields["status"] = {
        "oneOf": [
            ref("schemas", "Status"),
            without_description(listed),
        ],
        "description": "A status, or a list of them: " + listed["description"],
    }
    fields["id"] = CLIENT_ID

    counted: Schema = {"properties": {"counts": {"const": True}}}
    return {
        "type": "object",
        "description": "A query of the change feed (docs/changes-feed.md); any other field is a "
        "400. With `cursor`, `status`, `queue` and `task` may be left out or sent again "
        "unchanged; a cursor this service did not give out is a 400.",
        "properties": fields,
        "additionalProperties": False,
        # The pairs the service refuses (400).
        "not": {
            "anyOf": [
                {"required": ["since", "since_seconds"]},
                {"required": ["cursor", "since"]},
                {"required": ["cursor", "since_seconds"]},
                {**counted, "required": ["counts", "queue"]},
                {**counted, "required": ["counts", "task"]},
            ]
        },
    }


def changes_fields(settings: Settings) -> dict[str, Schema]:
    """Return the change feed's query fields, each as its own schema."""
    retention = settings.retention_seconds
    return {
        "since_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": retention,
            "description": "Start the window this many seconds before the read (inclusive); "
            f"{validation.DEFAULT_SINCE_SECONDS} when neither `since` nor `cursor` is sent. "
            "Not with `since` or `cursor`.",
        },
        "since": {
            "type": "number",
            "minimum": 0,
            "maximum": feed.MAX_SINCE,
            "description": "Start the window just after this moment (seconds since the epoch, "
            "exclusive): send the previous answer's `server_time`. Not with `since_seconds` or "
            "`cursor`.",
        },
        "status": {
            "type": "array",
            "items": ref("schemas", "Status"),
            "minItems": 1,
            "description": "Only jobs whose latest status is one of these.",
        },
        "queue": {
            "type": "string",
            "minLength": 1,
            "maxLength": feed.QUEUE_NAME_MAX,
            "description": "Only jobs of this RQ queue. Not with `counts`.",
        },
        "task": {
            "type": "string",
            "minLength": 1,
            "maxLength": validation.TASK_NAME_MAX,
            "description": "Only jobs of this task. Not with `counts`.",
        },
        "counts": {"type": "boolean", "description": "Add `counts` to the answer."},
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": feed.MAX_LIMIT,
            "description": "Answer in pages of at most this many jobs, oldest change first "
            f"({feed.DEFAULT_LIMIT} when `cursor` is sent without it). In a body a whole "
            "number written `10.0` is that integer; in a query string, digits only.",
        },
        "cursor": {
            "type": "string",
            "description": "Continue from a previous answer's `next_cursor`, as it came.",
        },
    }


# The shared error answers (components.responses), by HTTP status.
ERROR_ANSWERS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "JobNotFound",
    408: "BodyTimeout",
    409: "Conflict",
    413: "TooLarge",
    500: "RedisError",
    503: "RedisUnavailable",
}


def _errors(settings: Settings) -> Schema:
    retry = ("Retry-After",)
    return {
        "BadRequest": answer("The request is malformed; `message` says how.", 400),
        "Unauthorized": answer(
            "The API key is missing or wrong.", 401, message={"const": "Unauthorized"}
        ),
        "JobNotFound": answer(
            "No such job.", 404, message={"const": "Job not found"}, job_id=STRING
        ),
        "Conflict": answer(
            "The job's state does not allow it; `message` says why.", 409, job_id=STRING
        ),
        "BodyTimeout": answer(
            f"The body did not arrive within BODY_TIMEOUT ({settings.body_timeout} s).", 408
        ),
        "TooLarge": answer(
            f"The body is over MAX_REQUEST_BYTES ({settings.max_request_bytes} bytes).", 413
        ),
        # Not the app's: gunicorn refuses the request before the app sees it (its
        # limit_request_line); a query string of long non-ASCII values can reach it.
        "UriTooLong": {
            "description": "The request line is over gunicorn's 4094 bytes: gunicorn's own "
            "page, not the envelope. POST takes what a query string cannot.",
            "content": {"text/html": {"schema": STRING}},
        },
        "RedisError": answer(
            "Redis answered with an error of its own (logged, never shown).",
            500,
            queue_length=NULL,
        ),
        "RedisUnavailable": answer(
            "Redis cannot serve (unavailable, out of memory, read-only, loading, refusing "
            "writes): `message` says which.",
            503,
            queue_length=NULL,
            headers=retry,
        ),
    }


def errors_of(*codes: int, body: bool = False, redis: bool = True) -> dict[str, Schema]:
    """Return the error answers `codes`, with 408 and 413 for an operation that reads a `body`
    and 500 and 503 for one that asks `redis`."""
    chosen = set(codes) | ({408, 413} if body else set()) | ({500, 503} if redis else set())
    return {str(code): ref("responses", ERROR_ANSWERS[code]) for code in sorted(chosen)}


def json_body(schema: Schema, required: bool = True) -> Schema:
    """Return a JSON request body of `schema`."""
    return {"required": required, "content": {JSON: {"schema": schema}}}
