"""The OpenAPI 3.1 description of the API (`GET /openapi.json`), built from the code and the
settings: every operation, its request, its answers (the shared parts: `api/openapi_components`).

`tests/api/test_openapi.py` checks it against the URL map; `tests/e2e/test_contract.py` drives
the live service from it (docs/openapi.md).
"""

from __future__ import annotations

from importlib.metadata import version

from api import validation
from api.openapi_components import (
    CLIENT_ID,
    JOB_ID,
    JSON,
    NULL,
    STATUS_QUERY,
    STRING,
    Schema,
    answer,
    changes_fields,
    components,
    errors_of,
    json_body,
    ref,
    without_description,
)
from shared.settings import Settings
from shared.tasks.builtin import MAX_SLEEP_SECONDS

OPENAPI_VERSION = "3.1.0"
# What a query string's parameter says beyond its field in a body.
DECIMAL_WORDS = " Decimal digits: `0.5`, not `5e-1`."
QUERY_WORDS = {
    "status": " Repeat it (`status=failed&status=canceled`) or separate with commas.",
    "since_seconds": DECIMAL_WORDS,
    "since": DECIMAL_WORDS,
    "limit": " Decimal digits.",
}


def _changes_ops(settings: Settings) -> Schema:
    fields = changes_fields(settings)
    listed = answer(
        "`response` maps each job whose latest change lies in the window to its status.",
        200,
        message={"const": "success"},
        response={
            "type": "object",
            "propertyNames": {"pattern": JOB_ID["pattern"]},
            "additionalProperties": ref("schemas", "Status"),
        },
        extra={
            "server_time": {
                "type": "number",
                "description": "The Redis time of the read, in seconds since the epoch (µs).",
            },
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Where to continue from; null when the answer reached "
                "`server_time`.",
            },
            "counts": ref("schemas", "Counts"),
        },
        required=("server_time", "next_cursor"),
    )
    responses = {
        "200": listed,
        **errors_of(400, 401, 503),
        "404": answer(
            "The index marker is missing.", 404, message={"const": "Jobs directory not found"}
        ),
    }
    post_responses = {**responses, **errors_of(body=True, redis=False)}
    parameters = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": without_description(schema),
            "description": schema["description"] + QUERY_WORDS.get(name, ""),
            **(STATUS_QUERY if name == "status" else {}),
        }
        for name, schema in fields.items()
    ]
    summary = "The jobs whose latest change lies in a window: filtered, counted, in pages"
    return {
        "post": {
            "operationId": "jobs.jobs_status",
            "tags": ["jobs"],
            "summary": summary,
            "description": "Without a body: every job whose latest change lies in the last "
            f"{validation.DEFAULT_SINCE_SECONDS} s. A window over 10,000 jobs of a status "
            "streams (chunked). docs/changes-feed.md says what a client following "
            "`next_cursor` sees.",
            "requestBody": json_body(ref("schemas", "ChangesQuery"), required=False),
            "responses": post_responses,
        },
        "get": {
            "operationId": "jobs.jobs_status_get",
            "tags": ["jobs"],
            "summary": summary + " (from the query string)",
            "description": "The queries POST answers. Any other parameter is a 400, and so is "
            "one given twice (but `status`); the rules between fields are POST's.",
            "parameters": parameters,
            "responses": {**responses, "414": ref("responses", "UriTooLong")},
        },
    }


def _one_job_ops() -> Schema:
    wait: Schema = {
        "type": "number",
        "minimum": 0,
        "maximum": validation.MAX_WAIT_SECONDS,
        "description": "Answer as soon as the job ends, or after this many seconds with the "
        "status it has then; an ended job answers at once.",
    }
    described = answer(
        "The job.",
        200,
        message={"const": "success"},
        job_id=STRING,
        response=ref("schemas", "JobDescription"),
    )
    summary = "One job: status, times, progress and result or error"
    return {
        "post": {
            "operationId": "jobs.job_status",
            "tags": ["jobs"],
            "summary": summary,
            "requestBody": json_body(
                {
                    "type": "object",
                    "required": ["job_id"],
                    "properties": {
                        "job_id": JOB_ID,
                        "wait": {**wait, "type": ["number", "null"]},
                        "id": CLIENT_ID,
                    },
                }
            ),
            "responses": {"200": described, **errors_of(400, 401, 404, 503, body=True)},
        },
        "get": {
            "operationId": "jobs.job_status_get",
            "tags": ["jobs"],
            "summary": summary + " (from the query string)",
            "parameters": [
                {"name": "job_id", "in": "query", "required": True, "schema": JOB_ID},
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": wait["description"],
                    "schema": without_description(wait),
                },
            ],
            "responses": {
                "200": described,
                **errors_of(400, 401, 404, 503),
                "414": ref("responses", "UriTooLong"),
            },
        },
    }


def _submit_op() -> Schema:
    max_queue_length: Schema = {
        "oneOf": [{"type": "integer", "minimum": 1}, {"const": "unlimited"}],
        "description": "MAX_QUEUE_LENGTH, or `unlimited`.",
    }
    accepted = answer(
        "Accepted (or, for a named submission seen before, that job: `Idempotent-Replayed`).",
        202,
        message={"const": "processing"},
        job_id=STRING,
        response={
            "type": "object",
            "required": ["job_id", "task", "job_status"],
            "properties": {
                "job_id": JOB_ID,
                "task": {"type": ["string", "null"]},
                "job_status": ref("schemas", "Status"),
            },
            "additionalProperties": False,
        },
        queue_length={"type": ["integer", "null"], "minimum": 0},
        extra={"max_queue_length": max_queue_length},
        required=("max_queue_length",),
        headers=("Location", "Retry-After", "Idempotent-Replayed"),
    )
    redis_full = answer(
        "Redis cannot serve, or is too full to accept more jobs (then `max_queue_length` "
        "comes too).",
        503,
        queue_length={"type": ["integer", "null"], "minimum": 0},
        extra={"max_queue_length": max_queue_length},
        headers=("Retry-After",),
    )
    body: Schema = {
        "type": "object",
        "required": ["task"],
        "properties": {
            "task": {
                "type": "string",
                "minLength": 1,
                "maxLength": validation.TASK_NAME_MAX,
                "description": "A task of the catalog: the built-in `echo` (returns its "
                f'payload), `sleep` (`{{"seconds": n}}`, 0 to {MAX_SLEEP_SECONDS}) and `fail` '
                '(`{"message": s}`), and those of TASK_MODULES. An unknown task, or a payload '
                "its task refuses, is a 400.",
                "examples": ["echo"],
            },
            "payload": {"type": "object", "default": {}},
            "id": CLIENT_ID,
            "webhook_url": {
                "type": ["string", "null"],
                "maxLength": validation.WEBHOOK_URL_MAX,
                "pattern": r"^[hH][tT][tT][pP][sS]?://[!-\[\]-~]+$",
                "description": "POST the job's end here, signed (docs/webhooks.md); null for "
                "none. An http(s) URL with a host, printable ASCII; the host must resolve, to "
                "public addresses unless WEBHOOK_ALLOW_PRIVATE; the service needs a "
                "WEBHOOK_SECRET (else 400).",
            },
            "job_id": {
                **JOB_ID,
                "description": "Name the job: a named submission runs once (not with an "
                "Idempotency-Key).",
            },
        },
    }
    return {
        "post": {
            "operationId": "jobs.submit",
            "tags": ["jobs"],
            "summary": "Submit a job",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Name the submission: the same request again answers with "
                    "the same job; a different one under the same key is a 422. Not with "
                    "`job_id`.",
                    "schema": {
                        "type": "string",
                        # Printable ASCII; HTTP drops white space at either end.
                        "pattern": f"^[!-~]([ -~]{{0,{validation.IDEMPOTENCY_KEY_MAX - 2}}}"
                        "[!-~])?$",
                    },
                }
            ],
            "requestBody": json_body(body),
            "responses": {
                "202": accepted,
                **errors_of(400, 401, body=True),
                "409": answer("A job of that name was just removed: submit again.", 409),
                "422": answer(
                    "This job_id or Idempotency-Key was already used for a different request.",
                    422,
                    job_id=STRING,
                ),
                "429": answer(
                    "The queue holds MAX_QUEUE_LENGTH jobs.",
                    429,
                    queue_length={"type": "integer", "minimum": 0},
                    extra={"max_queue_length": max_queue_length},
                    required=("max_queue_length",),
                    headers=("Retry-After",),
                ),
                "503": redis_full,
            },
        }
    }


def _action_ops() -> Schema:
    body = json_body(
        {
            "type": "object",
            "required": ["job_id"],
            "properties": {"job_id": JOB_ID, "id": CLIENT_ID},
        }
    )
    described = ref("schemas", "JobDescription")
    errors = errors_of(400, 401, 404, 409, 503, body=True)
    return {
        "/v1/toolkit/job/cancel": {
            "post": {
                "operationId": "actions.cancel",
                "tags": ["job actions"],
                "summary": "Cancel a waiting job (it never runs) or stop a running one",
                "requestBody": body,
                "responses": {
                    "200": answer(
                        "Canceled: waiting, or stopped by its worker within 10 s.",
                        200,
                        message={"const": "canceled"},
                        job_id=STRING,
                        response=described,
                    ),
                    "202": answer(
                        "The stop is asked for; the job's worker has not stopped it yet.",
                        202,
                        message={
                            "const": "stop requested: the job's worker has not stopped it yet"
                        },
                        job_id=STRING,
                        response=described,
                    ),
                    **errors,
                },
            }
        },
        "/v1/toolkit/job/retry": {
            "post": {
                "operationId": "actions.retry",
                "tags": ["job actions"],
                "summary": "Queue a failed or canceled job again, under the same id",
                "requestBody": body,
                "responses": {
                    "202": answer(
                        "Queued again.",
                        202,
                        message={"const": "processing"},
                        job_id=STRING,
                        response=described,
                    ),
                    **errors,
                },
            }
        },
    }


def _service_ops() -> Schema:
    either: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
    details: Schema = {
        "type": "object",
        "required": ["redis"],
        "properties": {
            "redis": {"enum": ["ok", "refusing writes", "unavailable"]},
            "used_memory": {"type": "integer", "minimum": 0},
            "maxmemory": {"type": "integer", "minimum": 0},
            "accepting_jobs": {"type": "boolean"},
        },
        "additionalProperties": False,
    }
    health = {"anyOf": [NULL, details], "description": "Null without the key."}
    return {
        "/v1/toolkit/authenticate": {
            "get": {
                "operationId": "auth.authenticate",
                "tags": ["service"],
                "summary": "Check the API key",
                "responses": {
                    "200": answer(
                        "The key is right.",
                        200,
                        message={"const": "success"},
                        response={"const": "Authorized"},
                        queue_length={"type": ["integer", "null"], "minimum": 0},
                    ),
                    **errors_of(401, redis=False),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health.health",
                "tags": ["service"],
                "summary": "Whether Redis answers and accepts writes",
                "description": "Open to all; with the key, `response` tells what was read.",
                "security": [{}, *either],
                "responses": {
                    "200": answer(
                        "Healthy.",
                        200,
                        message={"const": "healthy"},
                        response=health,
                        queue_length={"type": ["integer", "null"], "minimum": 0},
                    ),
                    "503": answer(
                        "Redis does not answer, or refuses writes.",
                        503,
                        message={
                            "enum": ["unhealthy", "Redis unavailable", "Redis refuses writes"]
                        },
                        response=health,
                        queue_length={"type": ["integer", "null"], "minimum": 0},
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics.metrics",
                "tags": ["service"],
                "summary": "Every metric, in the Prometheus text format (docs/metrics.md)",
                "security": either,
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "headers": {"X-Request-ID": ref("headers", "X-Request-ID")},
                        "content": {"text/plain": {"schema": STRING}},
                    },
                    **errors_of(401, redis=False),
                },
            }
        },
    }


def _documentation_ops() -> Schema:
    request_id = {"X-Request-ID": ref("headers", "X-Request-ID")}
    return {
        "/openapi.json": {
            "get": {
                "operationId": "openapi.description",
                "tags": ["documentation"],
                "summary": "This description",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 description of the API.",
                        "headers": request_id,
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["openapi", "info", "paths"],
                                    "properties": {"openapi": {"const": OPENAPI_VERSION}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/docs/": {
            "get": {
                "operationId": "openapi.docs.show",
                "tags": ["documentation"],
                "summary": "This description, rendered (Swagger UI)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "headers": request_id,
                        "content": {"text/html": {"schema": STRING}},
                    }
                },
            }
        },
        "/docs/{path}": {
            "get": {
                "operationId": "openapi.docs.show_file",
                "tags": ["documentation"],
                "summary": "A file of the rendered page (script, style sheet, icon)",
                "security": [],
                "parameters": [
                    {
                        "name": "path",
                        "in": "path",
                        "required": True,
                        "schema": STRING,
                        "examples": {"style sheet": {"value": "swagger-ui.css"}},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "headers": request_id,
                        "content": {"*/*": {"schema": {}}},
                    },
                    "404": answer("No such file.", 404, message={"const": "Not Found"}),
                    "414": ref("responses", "UriTooLong"),
                },
            }
        },
    }


def build(settings: Settings) -> Schema:
    """Return the OpenAPI 3.1 description of the API as `settings` configure it."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "toolkit-jobs",
            "version": version("toolkit-jobs"),
            "description": "A job-status service for RQ. Every answer, success or error, is "
            "the No-Code Architects Toolkit envelope (`Envelope`); `response` holds the answer "
            "itself. Statuses: `queued`, `running`, `done`, `failed`, `canceled`.",
        },
        "security": [{"apiKey": []}],
        "tags": [
            {"name": "jobs", "description": "Submit jobs and read their statuses."},
            {"name": "job actions", "description": "Cancel and retry jobs."},
            {"name": "service", "description": "The key, health and metrics."},
            {"name": "documentation", "description": "This description and its page."},
        ],
        "paths": _in_order(
            {
                "/v1/toolkit/jobs": _submit_op(),
                "/v1/toolkit/jobs/status": _changes_ops(settings),
                "/v1/toolkit/job/status": _one_job_ops(),
                **_action_ops(),
                **_service_ops(),
                **_documentation_ops(),
            }
        ),
        "components": components(settings),
    }


def _in_order(paths: Schema) -> Schema:
    """Return `paths` with each operation's answers in the order of their HTTP status."""
    for item in paths.values():
        for operation in item.values():
            operation["responses"] = dict(sorted(operation["responses"].items()))
    return paths
