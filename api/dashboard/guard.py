"""Between a browser and rq-dashboard: login, CSRF, input checks, index-aware actions."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from api.errors import ApiError
from api.responses import reply
from shared.job import TrackedJob
from shared.queue import TrackedQueue
from shared.wiring import Services

REALM = 'Basic realm="toolkit-jobs dashboard", charset="UTF-8"'
BLUEPRINT = "rq_dashboard"
# The views that change RQ's state; browsers must reach them by a same-site POST only.
REQUEUE_ONE = f"{BLUEPRINT}.requeue_job_view"
REQUEUE_ALL = f"{BLUEPRINT}.requeue_all"
COMPACT = f"{BLUEPRINT}.compact_queue"
DELETE_ONE = f"{BLUEPRINT}.delete_job_view"
EMPTY = f"{BLUEPRINT}.empty_queue"
ACTIONS = frozenset({REQUEUE_ONE, REQUEUE_ALL, COMPACT, DELETE_ONE, EMPTY})
# The job-list views take registry, order, page size and page from the path, unchecked.
JOB_LISTS = frozenset({f"{BLUEPRINT}.list_jobs", f"{BLUEPRINT}.jobs_overview"})
REGISTRIES = frozenset(
    {"queued", "failed", "deferred", "started", "finished", "scheduled", "canceled"}
)
ORDERS = frozenset({"asc", "dsc"})
MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000
NUMBER_RE = re.compile(r"[0-9]{1,7}")
SECURITY_HEADERS = {
    # Never inside another site's frame: a framed page's clicks would be same-origin POSTs.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def install(dashboard: Flask, services: Services, user: str, password: str) -> None:
    """Put the login, the request checks, the security headers and the actions on `dashboard`."""
    dashboard.before_request(basic_auth_check(user, password))
    dashboard.before_request(check_request)
    dashboard.after_request(add_security_headers)
    # rq-dashboard acts through RQ's plain Job and Queue classes, which the status index never
    # hears of; these do the same through the service's classes, so the index follows at once.
    dashboard.view_functions[REQUEUE_ONE] = requeue_one_view(services)
    dashboard.view_functions[REQUEUE_ALL] = requeue_all_view(services)
    dashboard.view_functions[DELETE_ONE] = delete_one_view(services)
    dashboard.view_functions[EMPTY] = empty_view(services)

    @dashboard.errorhandler(NoSuchJobError)
    def no_such_job(exc: NoSuchJobError) -> Response:
        return reply(404, "Job not found")

    @dashboard.errorhandler(InvalidJobOperation)
    def not_failed(exc: InvalidJobOperation) -> Response:
        return reply(409, "Only a failed job can be requeued")


def basic_auth_check(user: str, password: str) -> Callable[[], None]:
    """Return a hook refusing requests without the dashboard's Basic credentials (401)."""
    expected_user = user.encode()
    expected_password = password.encode()

    def check() -> None:
        auth = request.authorization
        given_user = given_password = b""
        if auth is not None and auth.type == "basic":
            given_user = (auth.username or "").encode("utf-8", "surrogateescape")
            given_password = (auth.password or "").encode("utf-8", "surrogateescape")
        # Both compared, in constant time, whatever the first one says.
        user_ok = hmac.compare_digest(given_user, expected_user)
        password_ok = hmac.compare_digest(given_password, expected_password)
        if not (user_ok and password_ok):
            raise ApiError(401, "Unauthorized", headers={"WWW-Authenticate": REALM})

    return check


def check_request() -> None:
    """Refuse what rq-dashboard would mishandle: other instances, cross-site actions, bad lists."""
    args = request.view_args or {}
    if args.get("instance_number", 0) != 0:
        # This dashboard shows one Redis.
        raise ApiError(404, "Not Found")
    if request.endpoint in ACTIONS:
        _check_action(request.endpoint)
    elif request.endpoint in JOB_LISTS:
        _check_job_list(args)


def _check_action(endpoint: str) -> None:
    # rq-dashboard also takes a GET for "requeue all": a link or an <img> on any page the
    # operator opens would fire it, with the browser's cached credentials.
    if request.method != "POST":
        raise ApiError(405, "Method Not Allowed", headers={"Allow": "POST"})
    # A browser says where a request comes from; it must come from this dashboard's own page.
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "Cross-site request refused")
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
        raise ApiError(403, "Cross-site request refused")


def _check_job_list(args: dict[str, object]) -> None:
    if args.get("registry_name") not in REGISTRIES:
        raise ApiError(404, f"Unknown registry: one of {', '.join(sorted(REGISTRIES))}")
    if args.get("order") not in ORDERS:
        raise ApiError(400, "order must be asc or dsc")
    per_page, page = str(args.get("per_page")), str(args.get("page"))
    if not NUMBER_RE.fullmatch(per_page) or not 1 <= int(per_page) <= MAX_PER_PAGE:
        raise ApiError(400, f"per_page must be an integer from 1 to {MAX_PER_PAGE}")
    if not NUMBER_RE.fullmatch(page) or not 1 <= int(page) <= MAX_PAGE:
        raise ApiError(400, f"page must be an integer from 1 to {MAX_PAGE}")


def add_security_headers(resp: Response) -> Response:
    """Forbid framing and content sniffing of every dashboard answer."""
    resp.headers.update(SECURITY_HEADERS)
    return resp


def requeue_one_view(services: Services) -> Callable[[str], Response]:
    """Return the view requeueing one failed job through the service's job class."""

    def requeue_job_view(job_id: str) -> Response:
        job = TrackedJob.fetch(job_id, connection=services.redis)
        job.requeue()
        return jsonify(status="OK")

    return requeue_job_view


def requeue_all_view(services: Services) -> Callable[[str], Response]:
    """Return the view requeueing every failed job of a queue through the service's job class."""

    def requeue_all(queue_name: str) -> Response:
        failed = FailedJobRegistry(queue_name, connection=services.redis, job_class=TrackedJob)
        count = 0
        for job_id in failed.get_job_ids(cleanup=False):
            try:
                failed.requeue(job_id)
            except (NoSuchJobError, InvalidJobOperation):
                # Expired or requeued by someone else meanwhile: nothing left to do for it.
                continue
            count += 1
        return jsonify(status="OK", count=count)

    return requeue_all


def delete_one_view(services: Services) -> Callable[[str], Response]:
    """Return the view deleting one job through the service's job class."""

    def delete_job_view(job_id: str) -> Response:
        TrackedJob.fetch(job_id, connection=services.redis).delete()
        return jsonify(status="OK")

    return delete_job_view


# The registries the dashboard can empty besides the queue itself, by the name in its URL.
EMPTIABLE: dict[str, type[BaseRegistry]] = {
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "canceled": CanceledJobRegistry,
    "scheduled": ScheduledJobRegistry,
}


def empty_view(services: Services) -> Callable[[str, str], Response]:
    """Return the view emptying a queue or one of its registries through the service's classes."""

    def empty_queue(queue_name: str, registry_name: str) -> Response:
        if registry_name == "queued":
            count = TrackedQueue(queue_name, connection=services.redis).empty()
            return jsonify(status="OK", count=count)
        registry_class = EMPTIABLE.get(registry_name)
        if registry_class is None:
            raise ApiError(404, f"Unknown registry: one of queued, {', '.join(sorted(EMPTIABLE))}")
        registry = registry_class(queue_name, connection=services.redis, job_class=TrackedJob)
        count = 0
        # Each stored entry, as it is stored: the started registry's read
        # "<job id>:<execution id>", and a stale one must go as written.
        entries: list[bytes] = services.redis.zrange(registry.key, 0, -1)  # type: ignore[assignment]
        for entry in entries:
            job_id = registry.parse_job_id(entry.decode())
            try:
                TrackedJob.fetch(job_id, connection=services.redis).delete()
            except NoSuchJobError:
                # Gone already (expired, or deleted by someone else): drop the stale entry.
                services.redis.zrem(registry.key, entry)
                continue
            count += 1
        return jsonify(status="OK", count=count)

    return empty_queue
