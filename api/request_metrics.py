"""Per-process request metrics: latency by route, refused submissions, job actions
(multiprocess-safe)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram
from werkzeug.routing import Rule

PREFIX = "toolkit_jobs_"
# Most answers take a few ms; the upper buckets catch calls waiting on a slow Redis (its
# timeout is 2 s by default).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Labels come from a fixed set, never from what a client sends: paths and methods are free text.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED = "unmatched"

# Process-local: in multiprocess mode (gunicorn) each worker writes its own file and a scrape
# sums them all, those of dead workers included.
REQUEST_DURATION = Histogram(
    f"{PREFIX}request_duration_seconds",
    "Time to answer an HTTP request, by method, matched route rule and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
REFUSED_SUBMISSIONS = Counter(
    f"{PREFIX}submissions_refused",
    "Submissions refused: with 429 because the queue held MAX_QUEUE_LENGTH jobs (reason "
    '"queue_full"), with 503 because Redis had no room for more jobs and their results '
    '(reason "memory").',
    ["reason"],
)
# Both series from the start, so that a rate over them never misses the first refusal.
for _reason in ("queue_full", "memory"):
    REFUSED_SUBMISSIONS.labels(_reason)


JOB_ACTIONS = Counter(
    f"{PREFIX}job_actions",
    "Cancel and retry requests by outcome: cancel canceled (a waiting job), stopped (a running "
    "job, stopped within the request), stopping (stop asked, not yet done) or conflict (409); "
    "retry queued or conflict (409).",
    ["action", "outcome"],
)
for _action, _outcome in (
    ("cancel", "canceled"),
    ("cancel", "stopped"),
    ("cancel", "stopping"),
    ("cancel", "conflict"),
    ("retry", "queued"),
    ("retry", "conflict"),
):
    JOB_ACTIONS.labels(_action, _outcome)


def method_label(method: str) -> str:
    """Return the method as a label value, folding unknown methods into "other"."""
    return method if method in METHODS else OTHER_METHOD


def route_label(rule: Rule | None, mount: str = "") -> str:
    """Return the matched route rule (under its app's mount point), or "unmatched"."""
    return mount + rule.rule if rule is not None else UNMATCHED


# The histogram's children by (method, rule, status, mount), each labelled once. The labels
# come from fixed sets (METHODS, the URL map, the codes the app answers): so does the cache.
_children: dict[tuple[str, str | None, int, str], Any] = {}


def observe_request(
    method: str, rule: Rule | None, status: int, seconds: float, mount: str = ""
) -> None:
    """Count one answered request in the latency histogram."""
    key = (method, rule.rule if rule is not None else None, status, mount)
    child = _children.get(key)
    if child is None:
        route = route_label(rule, mount)
        child = REQUEST_DURATION.labels(method_label(method), route, str(status))
        _children[key] = child
    child.observe(seconds)
