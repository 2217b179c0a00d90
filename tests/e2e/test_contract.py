"""The contract test: schemathesis drives the live service (gunicorn, a worker, Redis) from the
description it serves at /openapi.json; no answer is a 5xx or breaks it (docs/openapi.md)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from hypothesis import settings
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    object_level_authorization,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import openapi_spec
from api.openapi_components import JOB_ID
from api.validation import MAX_WAIT_SECONDS
from shared.settings import Settings
from tests.helpers import (
    API_KEY,
    HOST,
    JOB_CANCEL,
    Receiver,
    RedisServer,
    call,
    free_port,
    job_status,
    post_job,
    running,
    running_tree,
    service_env,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.e2e

# Drawn waits are cut to this: the description's 60 s would outlast the run.
LONGEST_WAIT = 1.0
EXAMPLES_PER_OPERATION = 50
# Checks that cannot apply here: object_level_authorization needs a second identity (the API
# has one key). The stateful checks (use_after_free, ensure_resource_availability) and
# max_response_time (no limit set; timing belongs in bench/) do nothing in this run.
NOT_APPLICABLE = [object_level_authorization]
# What a request without the key is checked for: it is refused, and the refusal is described.
REFUSAL_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# schemathesis's defaults: the answers to valid data (positive_data_acceptance) and to invalid
# data (negative_data_rejection).
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
# A name used before is a 422 whatever the request holds: an answer about the service's state,
# as 409 is, not about the request's shape.
ACCEPTED_JOB = [*ACCEPTED, "422"]
# Operations whose input travels in the URL: gunicorn answers a request line over 4094 bytes
# with its own 414 before the app sees it, whatever the request holds.
IN_THE_URL = ("GET /v1/toolkit/jobs/status", "GET /v1/toolkit/job/status", "GET /docs/{path}")


@dataclass(frozen=True)
class Service:
    """The live service under test: its address, jobs it holds, its webhook receiver."""

    base_url: str
    job_ids: tuple[str, ...]
    webhook_url: str


def load(*, with_key: bool) -> BaseSchema:
    """Return the description the service gives itself with the test settings, sending the key
    with each request or not (the `service` fixture checks the live one is the same)."""
    schemes = {"apiKey": {"api_key": API_KEY}, "bearer": {"bearer": API_KEY}}
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": schemes} if with_key else {},
            "generation": {"max-examples": EXAMPLES_PER_OPERATION, "database": "none"},
            "operations": [
                {
                    "include-name": "POST /v1/toolkit/jobs",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_JOB}},
                },
                {
                    "include-name": list(IN_THE_URL),
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "414"]},
                        "negative_data_rejection": {"expected-statuses": [*REFUSED, "414"]},
                    },
                },
            ],
        }
    )
    return schemathesis.openapi.from_dict(DESCRIPTION, config=config)


# The settings the test service runs with (service_env leaves these at their defaults).
DESCRIPTION = openapi_spec.build(Settings(api_key=API_KEY))
SUBMISSION = DESCRIPTION["paths"]["/v1/toolkit/jobs"]["post"]
CHANGES_FIELDS = DESCRIPTION["components"]["schemas"]["ChangesQuery"]["properties"]
schema = load(with_key=True)


@pytest.fixture(scope="module")
def service(redis_server: RedisServer) -> Iterator[Service]:
    """Run the API and a worker, holding jobs in every status, and a webhook receiver;
    check that the API serves the description the tests are drawn from."""
    client = redis_server.client()
    client.flushall()
    client.close()
    port = free_port()
    env = service_env(redis_server.url, WEBHOOK_ALLOW_PRIVATE="true")
    with Receiver() as receiver, running(start_api(env, port)):
        served = call(port, "GET", "/openapi.json", key=None)
        assert served.status == 200 and served.body == DESCRIPTION, served.body
        canceled = submit_ok(port, "echo", {})
        assert call(port, "POST", JOB_CANCEL, {"job_id": canceled}).status == 200
        with_webhook = post_job(port, "echo", {"n": 1}, webhook_url=receiver.url)
        assert with_webhook.status == 202, with_webhook.body
        done = with_webhook.body["job_id"]
        failed = submit_ok(port, "fail", {"message": "on purpose"})
        with running_tree(start_worker(env)):
            wait_finished(port, done)
            wait_finished(port, failed)
            # Running until a drawn cancel stops it, and one waiting behind it meanwhile.
            running_job = submit_ok(port, "sleep", {"seconds": 30})
            wait_until(
                lambda: job_status(port, running_job).body["response"]["job_status"] == "running"
            )
            waiting = submit_ok(port, "echo", {})
            ids = (done, failed, canceled, running_job, waiting)
            yield Service(f"http://{HOST}:{port}", ids, receiver.url)


@pytest.fixture(scope="module")
def fit(service: Service) -> Callable[[Any], None]:
    """Return what fits a drawn request to the live service (see `fitted_to`)."""
    return fitted_to(service)


def fitted_to(service: Service) -> Callable[[Any], None]:
    """Return a function that fits a drawn request to the live service in place, keeping it
    valid if it was valid and invalid if it was not: only valid values are replaced, by valid
    values. It does what the description says in words only, or cannot say: a task of the
    catalog with its payload, a webhook host that resolves, a job that exists (sometimes), a
    cursor the service gave out (none: a made-up cursor is left out), not both `since` and
    `since_seconds` nor `counts` with a filter in a query string, not both `job_id` and an
    Idempotency-Key, a `limit` written as an integer; and a wait cut to LONGEST_WAIT."""
    ids = itertools.cycle((*service.job_ids, None))
    # Every other named submission gets a name of its own: the rest may meet a name used before.
    fresh = itertools.count()
    tasks = itertools.cycle(
        (("echo", None), ("sleep", {"seconds": 0.05}), ("fail", {"message": "drawn"}))
    )

    def fit(case: Any) -> None:
        label = f"{case.method} {case.path}"
        for part in (case.body, case.query):
            if not isinstance(part, dict):
                continue
            _cut_wait(part)
            if "/job/" in label and _valid_job_id(part.get("job_id")):
                part["job_id"] = next(ids) or part["job_id"]
            if label.endswith("/jobs/status"):
                _fit_changes_query(part, query=part is case.query)
        if label == "POST /v1/toolkit/jobs" and isinstance(case.body, dict):
            _fit_job_request(case, next(tasks), service.webhook_url)
            n = next(fresh)
            if n % 2 and _valid_job_id(case.body.get("job_id")):
                case.body["job_id"] = f"{case.body['job_id'][:100]}-{n}"

    return fit


def _valid_job_id(value: Any) -> bool:
    return _fits(value, JOB_ID)


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    """Return whether `value` is valid under `schema`, a part of the description."""
    return bool(Draft202012Validator(schema).is_valid(value))


def _cut_wait(part: dict[str, Any]) -> None:
    wait = part.get("wait")
    if isinstance(wait, str):
        # A query string's number, as drawn or as sent.
        with contextlib.suppress(ValueError):
            wait = float(wait)
    number = isinstance(wait, int | float) and not isinstance(wait, bool)
    if number and 0 <= wait <= MAX_WAIT_SECONDS:
        part["wait"] = min(wait, LONGEST_WAIT)


def _fit_changes_query(part: dict[str, Any], *, query: bool) -> None:
    limit = part.get("limit")
    if isinstance(limit, float) and limit.is_integer():
        # JSON Schema's integers include 10.0; a query string takes digits only (docs/openapi.md).
        part["limit"] = int(limit)
    if isinstance(part.get("cursor"), str):
        del part["cursor"]
    if not query:
        return
    if "since_seconds" in part:
        _drop_if_valid(part, "since")
    if part.get("counts") in (True, "true"):
        _drop_if_valid(part, "queue")
        _drop_if_valid(part, "task")
    for name in ("since", "since_seconds"):
        value = part.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            # A query string's numbers are decimal digits: 0.00001, never 1e-05.
            part[name] = format(Decimal(repr(value)), "f")


def _drop_if_valid(part: dict[str, Any], name: str) -> None:
    # Only a valid field goes: an invalid request keeps what makes it invalid.
    if name not in part:
        return
    schema, value = CHANGES_FIELDS[name], part[name]
    if schema["type"] == "number" and isinstance(value, str):
        # Drawn as the query string will carry it.
        with contextlib.suppress(ValueError):
            value = float(value)
    if _fits(value, schema):
        del part[name]


def _fit_job_request(case: Any, task: tuple[str, Any], webhook_url: str) -> None:
    body = case.body
    name, payload = task
    fields = SUBMISSION["requestBody"]["content"]["application/json"]["schema"]["properties"]
    has_payload = isinstance(body.get("payload", {}), dict)
    if _fits(body.get("task"), fields["task"]) and has_payload:
        body["task"] = name
        if payload is not None:
            body["payload"] = payload
    if isinstance(body.get("webhook_url"), str) and _fits(
        body["webhook_url"], fields["webhook_url"]
    ):
        body["webhook_url"] = webhook_url
    headers = case.headers if case.headers is not None else {}
    (key,) = SUBMISSION["parameters"]
    if "job_id" in body and _fits(headers.get(key["name"]), key["schema"]):
        del headers[key["name"]]


@schema.parametrize()
# The same draws every run: CI fails when the service or its description changes, never by luck.
@settings(deadline=None, derandomize=True)
def test_no_answer_is_a_server_error_or_breaks_the_description(
    case: Any, service: Service, fit: Callable[[Any], None]
) -> None:
    """Every operation, drawn requests valid and not: no 5xx, every answer as described."""
    # schemathesis checks the request again as sent, so a fitted one keeps its right label.
    fit(case)
    case.call_and_validate(base_url=service.base_url, excluded_checks=NOT_APPLICABLE)


def test_every_keyed_operation_refuses_a_request_without_the_key_as_described(
    service: Service,
) -> None:
    """Without the key, each keyed operation answers 401 and the open ones 200, as described."""
    refused, open_ = [], []
    for result in load(with_key=False).get_all_operations():
        operation = result.ok()
        security = operation.definition.raw.get("security", [{"apiKey": []}])
        keyed = bool(security) and {} not in security
        given: dict[str, Any] = {}
        if "requestBody" in operation.definition.raw:
            given["body"] = {}
        if "{path}" in operation.path:
            given["path_parameters"] = {"path": "index.css"}
        if operation.label == "GET /v1/toolkit/job/status":
            given["query"] = {"job_id": "none"}
        case = operation.Case(**given)
        response = case.call(base_url=service.base_url)
        case.validate_response(response, checks=REFUSAL_CHECKS)
        assert response.status_code == (401 if keyed else 200), operation.label
        (refused if keyed else open_).append(operation.label)
    assert "POST /v1/toolkit/jobs" in refused and "GET /metrics" in refused, refused
    assert sorted(open_) == ["GET /docs/", "GET /docs/{path}", "GET /health", "GET /openapi.json"]
