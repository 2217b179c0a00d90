"""rq-dashboard inside the API: Basic auth, refused when unconfigured, read-mostly, JSON errors."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job, JobStatus
from werkzeug.test import TestResponse

from api.dashboard.app import create_dashboard_app, display_url
from shared import keys
from shared.index import StatusIndex, parse_transitions
from shared.status import Status
from shared.tasks import RUNNER
from tests.api.conftest import UNREACHABLE_REDIS
from tests.helpers import AUTH, JOBS, JOBS_STATUS, assert_envelope, indexed, submit
from worker.repair import repair_pass

PASSWORD = "dashboard-secret-42"
QUEUES = "/dashboard/0/data/queues.json"


def basic(user: str, password: str) -> dict[str, str]:
    """Return the Authorization header of HTTP Basic for `user` and `password`."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


LOGIN = basic("admin", PASSWORD)


@pytest.fixture
def dash(make_app: Callable[..., Flask]) -> FlaskClient:
    """Return a client of an app whose dashboard has a password."""
    return make_app(dashboard_password=PASSWORD).test_client()


def listed(client: FlaskClient, registry: str) -> list[str]:
    """Return the job ids the dashboard lists in `registry` of the default queue."""
    resp = client.get(f"/dashboard/0/data/jobs/default/{registry}/100/asc/1.json", headers=LOGIN)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return [job["id"] for job in resp.get_json()["jobs"]]


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/", QUEUES, "/dashboard/static/x.css"])
def test_without_a_password_the_dashboard_is_refused(client: FlaskClient, path: str) -> None:
    """No DASHBOARD_PASSWORD: every dashboard path is a JSON 403, credentials or not."""
    for headers in ({}, LOGIN, AUTH):
        body = assert_envelope(client.get(path, headers=headers), 403)
        assert body["message"] == "Dashboard disabled: set DASHBOARD_PASSWORD to enable it"
    assert_envelope(client.post(path, headers=LOGIN), 403)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("admin", "wrong-password"),
        basic("someone", PASSWORD),
        basic("admin", PASSWORD + "x"),
        basic("", ""),
        AUTH,
        {"Authorization": f"Bearer {PASSWORD}"},
        {"Authorization": "Basic not-base64!"},
    ],
    ids=["none", "password", "user", "longer", "empty", "api-key", "bearer", "garbled"],
)
def test_wrong_credentials_get_a_json_401_with_a_challenge(
    dash: FlaskClient, headers: dict[str, str]
) -> None:
    """Anything but admin's Basic credentials is a JSON 401 asking for Basic auth."""
    for path in ("/dashboard/", QUEUES, "/dashboard/0/view/workers"):
        resp = dash.get(path, headers=headers)
        body = assert_envelope(resp, 401)
        assert body["message"] == "Unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="toolkit-jobs dashboard"')


def test_the_right_credentials_open_the_page_and_its_json(dash: FlaskClient) -> None:
    """admin and the password open the HTML page, its JSON and its static files."""
    page = dash.get("/dashboard/", headers=LOGIN)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    # The page links its scripts under the mount point, so a browser finds them.
    assert 'src="/dashboard/static/js/jquery-3.5.1.min.js"' in page.get_data(as_text=True)
    with dash.get("/dashboard/static/js/jquery-3.5.1.min.js", headers=LOGIN) as script:
        assert script.status_code == 200
        assert script.mimetype == "text/javascript"
    assert dash.get(QUEUES, headers=LOGIN).get_json() == {"queues": []}


def test_a_configured_user_name_replaces_admin(make_app: Callable[..., Flask]) -> None:
    """DASHBOARD_USER names the one user; admin is then refused."""
    client = make_app(dashboard_user="ops", dashboard_password=PASSWORD).test_client()
    assert client.get(QUEUES, headers=basic("ops", PASSWORD)).status_code == 200
    assert_envelope(client.get(QUEUES, headers=LOGIN), 401)


def test_credentials_are_compared_in_constant_time(
    dash: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User and password both go through hmac.compare_digest, even when the user is wrong."""
    import api.dashboard.guard

    calls: list[tuple[bytes, bytes]] = []
    real = api.dashboard.guard.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.dashboard.guard.hmac, "compare_digest", spy)
    assert_envelope(dash.get(QUEUES, headers=basic("nobody", "guess")), 401)
    assert dash.get(QUEUES, headers=LOGIN).status_code == 200
    assert calls == [
        (b"nobody", b"admin"),
        (b"guess", PASSWORD.encode()),
        (b"admin", b"admin"),
        (PASSWORD.encode(), PASSWORD.encode()),
    ]


def test_json_lists_jobs_in_the_registries_rq_puts_them_in(
    dash: FlaskClient, run_worker: Callable[..., Any]
) -> None:
    """Jobs submitted through the API and run show up as finished, failed and queued."""
    done = submit(dash, "echo", {"n": 1})
    failed = submit(dash, "fail", {"message": "on purpose"})
    run_worker()
    waiting = submit(dash, "echo", {"n": 2})
    (queue,) = dash.get(QUEUES, headers=LOGIN).get_json()["queues"]
    assert (queue["name"], queue["count"]) == ("default", 1)
    assert queue["finished_job_registry_count"] == 1
    assert queue["failed_job_registry_count"] == 1
    assert listed(dash, "finished") == [done]
    assert listed(dash, "failed") == [failed]
    assert listed(dash, "queued") == [waiting]
    job = dash.get(f"/dashboard/0/data/job/{done}.json", headers=LOGIN).get_json()
    assert (job["id"], job["status"]) == (done, "finished")


def test_deleting_a_job_removes_it_from_rq_and_the_index(
    dash: FlaskClient, conn: redis.Redis, run_worker: Callable[..., Any]
) -> None:
    """The dashboard's delete removes the job, its registry entry and its index entry at once."""
    failed = submit(dash, "fail", {"message": "delete me"})
    kept = submit(dash, "fail", {"message": "keep me"})
    run_worker()
    resp = dash.post(f"/dashboard/job/{failed}/delete", headers=LOGIN)
    assert resp.status_code == 200 and resp.get_json() == {"status": "OK"}
    assert not conn.exists(keys.rq_job_key(failed))
    assert listed(dash, "failed") == [kept]
    assert indexed(conn, failed) is None
    found = indexed(conn, kept)
    assert found is not None and found[0] is Status.FAILED


@pytest.mark.parametrize(
    ("registry", "status"), [("queued", Status.QUEUED), ("failed", Status.FAILED)]
)
def test_emptying_removes_the_jobs_from_rq_and_the_index(
    dash: FlaskClient,
    conn: redis.Redis,
    run_worker: Callable[..., Any],
    registry: str,
    status: Status,
) -> None:
    """Emptying the queue or a registry deletes its jobs in RQ and in the index, nothing else."""
    if registry == "failed":
        targets = [submit(dash, "fail", {"message": str(n)}) for n in range(3)]
        run_worker()
        other = submit(dash, "echo")
    else:
        other = submit(dash, "fail", {"message": "stays"})
        run_worker()
        targets = [submit(dash, "echo", {"n": n}) for n in range(3)]
    resp = dash.post(f"/dashboard/queue/default/{registry}/empty", headers=LOGIN)
    assert resp.status_code == 200 and resp.get_json() == {"status": "OK", "count": 3}
    assert listed(dash, registry) == []
    for job_id in targets:
        assert not conn.exists(keys.rq_job_key(job_id))
        assert indexed(conn, job_id) is None
    assert indexed(conn, other) is not None
    assert conn.zcard(keys.status_index_key(status)) == 0


def test_emptying_an_unknown_registry_is_a_json_404(dash: FlaskClient) -> None:
    """An empty of a registry RQ does not have is refused with the envelope."""
    body = assert_envelope(dash.post("/dashboard/queue/default/nothing/empty", headers=LOGIN), 404)
    assert body["message"].startswith("Unknown registry")


def test_a_requeue_from_the_dashboard_is_recorded_when_the_job_runs_again(
    dash: FlaskClient, conn: redis.Redis, run_worker: Callable[..., Any]
) -> None:
    """Requeueing a failed job (same-origin POST) runs it again; the index follows RQ."""
    failed = submit(dash, "fail", {"message": "twice"})
    run_worker()
    failed_key = keys.status_index_key(Status.FAILED)
    first_failure = conn.zscore(failed_key, failed)
    assert first_failure is not None
    resp = dash.post(
        f"/dashboard/job/{failed}/requeue",
        headers={**LOGIN, "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert listed(dash, "queued") == [failed]
    # The index follows at once, not only when a worker picks the job up again.
    assert conn.zscore(keys.status_index_key(Status.QUEUED), failed) is not None
    assert conn.zscore(failed_key, failed) is None
    assert parse_transitions(conn.hgetall(keys.transitions_key()))[("failed", "queued")] == 1
    run_worker()
    assert Job.fetch(failed, connection=conn).get_status() == JobStatus.FAILED
    statuses = assert_envelope(dash.post(JOBS_STATUS, headers=AUTH, json={}), 200)["response"]
    assert statuses == {failed: "failed"}
    # Its index entry moved again when the worker ran it the second time.
    second_failure = conn.zscore(failed_key, failed)
    assert second_failure is not None and second_failure > first_failure


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["origin", "sec-fetch-site"],
)
def test_cross_site_posts_are_refused(
    dash: FlaskClient, conn: redis.Redis, run_worker: Callable[..., Any], headers: dict[str, str]
) -> None:
    """A POST another site's page makes with the cached credentials is a JSON 403, no effect."""
    failed = submit(dash, "fail", {"message": "stay failed"})
    run_worker()
    resp = dash.post(f"/dashboard/job/{failed}/requeue", headers={**LOGIN, **headers})
    assert_envelope(resp, 403)
    assert resp.get_json()["message"] == "Cross-site request refused"
    assert Job.fetch(failed, connection=conn).get_status() == JobStatus.FAILED


def test_only_instance_zero_exists(dash: FlaskClient) -> None:
    """The dashboard shows one Redis: instance 1 is a JSON 404, and only after the login."""
    assert_envelope(dash.get("/dashboard/1/data/queues.json"), 401)
    assert_envelope(dash.get("/dashboard/1/data/queues.json", headers=LOGIN), 404)


def test_unknown_dashboard_paths_and_methods_are_json(dash: FlaskClient) -> None:
    """Unknown paths are a JSON 404 and unsupported methods a JSON 405, never an HTML page."""
    assert_envelope(dash.get("/dashboard/nope", headers=LOGIN), 404)
    assert_envelope(dash.put(QUEUES, headers=LOGIN), 405)
    assert_envelope(dash.options(QUEUES, headers=LOGIN), 405)


def test_redis_down_gives_a_json_error(make_app: Callable[..., Flask]) -> None:
    """With Redis unreachable the dashboard's JSON answers a JSON 503 envelope in words."""
    client = make_app(
        redis_url=UNREACHABLE_REDIS, redis_timeout=0.5, dashboard_password=PASSWORD
    ).test_client()
    resp = client.get(QUEUES, headers=LOGIN)
    body = assert_envelope(resp, 503)
    assert body["message"] == "Request failed: Redis unavailable"
    assert "nonexistent" not in resp.get_data(as_text=True)


def test_the_api_is_untouched_by_the_mount(dash: FlaskClient) -> None:
    """With the dashboard mounted, the API's own routes answer as before."""
    assert_envelope(dash.get("/health"), 200)
    assert_envelope(dash.post(JOBS, headers=AUTH, json={"task": "echo", "payload": {}}), 202)
    assert_envelope(dash.get("/dashboardx"), 404)


def test_requests_to_the_dashboard_are_logged_with_their_full_path(
    dash: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The access log names /dashboard/..., never the credentials."""
    with caplog.at_level(logging.INFO, logger="api.access"):
        dash.get(QUEUES, headers=LOGIN)
    (record,) = [r for r in caplog.records if r.name == "api.access"]
    assert record.path == QUEUES  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    assert PASSWORD not in record.getMessage()


def test_the_page_never_shows_redis_credentials(make_app: Callable[..., Flask]) -> None:
    """The instance picker shows the Redis URL without its password or query."""
    app = make_app(dashboard_password=PASSWORD)
    page: TestResponse = app.test_client().get("/dashboard/", headers=LOGIN)
    shown = display_url(app.extensions["toolkit_jobs"].settings.redis_url)
    assert shown in page.get_data(as_text=True)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://redis:6379/0"),
        ("redis://user:s3cret@10.0.0.5/2", "redis://10.0.0.5/2"),
        (
            "rediss://:s3cret@cache.example:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://cache.example:6380/0",
        ),
        ("unix:///run/redis.sock?password=s3cret&db=1", "unix:///run/redis.sock"),
        ("redis://:s3cret@[::1]:6379/0", "redis://[::1]:6379/0"),
    ],
)
def test_display_url_drops_credentials_and_query(url: str, shown: str) -> None:
    """display_url keeps scheme, host, port and path, and nothing secret."""
    assert display_url(url) == shown
    assert "s3cret" not in display_url(url)


def test_dashboard_requests_are_timed_under_their_mounted_route(dash: FlaskClient) -> None:
    """The latency histogram labels a dashboard request /dashboard/<rule>, never the raw path."""
    dash.get("/dashboard/0/data/queues.json", headers=LOGIN)
    text = dash.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert 'route="/dashboard/<int:instance_number>/data/queues.json"' in text
    assert 'route="/dashboard/0/data/queues.json"' not in text


def test_requeue_all_requeues_every_failed_job_into_the_index(
    dash: FlaskClient, conn: redis.Redis, run_worker: Callable[..., Any]
) -> None:
    """ "Requeue all" (a same-site POST) queues every failed job, and the index says queued."""
    failed = sorted(submit(dash, "fail", {"message": f"n{i}"}) for i in range(3))
    run_worker()
    resp = dash.post(
        "/dashboard/requeue/default", headers={**LOGIN, "Sec-Fetch-Site": "same-origin"}
    )
    assert resp.get_json() == {"status": "OK", "count": 3}
    assert sorted(listed(dash, "queued")) == failed
    statuses = assert_envelope(dash.post(JOBS_STATUS, headers=AUTH, json={}), 200)["response"]
    assert statuses == dict.fromkeys(failed, "queued")


def test_requeue_all_by_get_is_refused(
    dash: FlaskClient, conn: redis.Redis, run_worker: Callable[..., Any]
) -> None:
    """rq-dashboard's GET /requeue/<queue> (a link or <img> could fire it) is a JSON 405."""
    failed = submit(dash, "fail", {"message": "stay"})
    run_worker()
    for headers in (LOGIN, {**LOGIN, "Sec-Fetch-Site": "cross-site"}):
        resp = dash.get("/dashboard/requeue/default", headers=headers)
        assert_envelope(resp, 405)
        assert resp.headers["Allow"] == "POST"
    assert Job.fetch(failed, connection=conn).get_status() == JobStatus.FAILED


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/dashboard/0/data/job/nope.json", 404),
        ("GET", "/dashboard/0/view/job/nope", 404),
        ("POST", "/dashboard/job/nope/requeue", 404),
        ("GET", "/dashboard/0/data/jobs/default/bogus/10/asc/1.json", 404),
        ("GET", "/dashboard/0/view/jobs/default/bogus/10/asc/1", 404),
        ("GET", "/dashboard/0/data/jobs/default/finished/x/asc/1.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/0/asc/1.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/-1/asc/1.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/101/asc/1.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/1000000000/asc/1.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/10/up/1.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/10/asc/0.json", 400),
        ("GET", "/dashboard/0/data/jobs/default/finished/10/asc/x.json", 400),
    ],
)
def test_bad_dashboard_input_is_a_clear_json_error(
    dash: FlaskClient, method: str, path: str, code: int
) -> None:
    """Unknown jobs and registries are a JSON 404, bad page arguments a JSON 400, never a 500."""
    assert_envelope(dash.open(path, method=method, headers=LOGIN), code)


def test_requeueing_a_job_that_did_not_fail_is_a_409(
    dash: FlaskClient, conn: redis.Redis, run_worker: Callable[..., Any]
) -> None:
    """Only failed jobs can be requeued: a finished one is a JSON 409 and stays finished."""
    done = submit(dash, "echo", {})
    run_worker()
    resp = dash.post(f"/dashboard/job/{done}/requeue", headers=LOGIN)
    assert assert_envelope(resp, 409)["message"] == "Only a failed job can be requeued"
    assert Job.fetch(done, connection=conn).get_status() == JobStatus.FINISHED


def test_every_answer_forbids_framing_and_sniffing(dash: FlaskClient) -> None:
    """The page, its JSON and its refusals all carry anti-framing and nosniff headers."""
    for resp in (
        dash.get("/dashboard/", headers=LOGIN),
        dash.get(QUEUES, headers=LOGIN),
        dash.get(QUEUES),
    ):
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_every_dashboard_route_needs_the_login(app: Flask) -> None:
    """Each rule and method of the mounted dashboard, static files included, is a 401 unlogged."""
    services = app.extensions["toolkit_jobs"]
    dashboard = create_dashboard_app(
        replace(services, settings=replace(services.settings, dashboard_password=PASSWORD))
    )
    client = dashboard.test_client()
    rules = list(dashboard.url_map.iter_rules())
    assert len(rules) > 10, "rq-dashboard's routes are missing"
    values = {
        "instance_number": "0",
        "queue_name": "default",
        "registry_name": "failed",
        "per_page": "10",
        "order": "asc",
        "page": "1",
        "job_id": "some-job",
        "filename": "css/main.css",
    }
    for rule in rules:
        path = rule.rule
        for name in rule.arguments:
            path = re.sub(rf"<(?:\w+:)?{name}>", values[name], path)
        for method in sorted((rule.methods or set()) - {"HEAD"}):
            with client.open(path, method=method) as resp:
                body = assert_envelope(resp, 401)
                assert body["message"] == "Unauthorized", (path, method)


def dashboard_counts(client: FlaskClient) -> dict[Status, int]:
    """Return the default queue's job counts as the dashboard shows them, in API statuses."""
    resp = client.get(QUEUES, headers=LOGIN)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (queue,) = [q for q in resp.get_json()["queues"] if q["name"] == "default"]
    return {
        Status.QUEUED: queue["count"]
        + queue["deferred_job_registry_count"]
        + queue["scheduled_job_registry_count"],
        Status.RUNNING: queue["started_job_registry_count"],
        Status.DONE: queue["finished_job_registry_count"],
        Status.FAILED: queue["failed_job_registry_count"],
        Status.CANCELED: queue["canceled_job_registry_count"],
    }


def api_counts(client: FlaskClient) -> dict[Status, int]:
    """Return the number of jobs per status the API's window of changes lists."""
    body = assert_envelope(client.post(JOBS_STATUS, json={"since_seconds": 600}, headers=AUTH), 200)
    statuses = list(body["response"].values())
    return {status: statuses.count(status.value) for status in Status}


def test_dashboard_counts_and_the_api_agree_after_every_operation(
    dash: FlaskClient,
    conn: redis.Redis,
    index: StatusIndex,
    run_worker: Callable[..., Any],
) -> None:
    """After the dashboard's actions (at once) and RQ's plain ones (after a repair) both agree."""
    done = [submit(dash, "echo", {"n": n}) for n in range(3)]
    failed = [submit(dash, "fail", {"message": str(n)}) for n in range(3)]
    run_worker()
    queued = [submit(dash, "echo", {"n": n}) for n in range(4)]
    for path in (
        f"/dashboard/job/{failed[0]}/delete",
        f"/dashboard/job/{failed[1]}/requeue",
        f"/dashboard/job/{queued[0]}/delete",
    ):
        assert dash.post(path, headers=LOGIN).status_code == 200, path
    expected = {Status.QUEUED: 4, Status.RUNNING: 0, Status.DONE: 3, Status.FAILED: 1}
    assert dashboard_counts(dash) == api_counts(dash) == {**expected, Status.CANCELED: 0}

    Job.fetch(done[0], connection=conn).delete()
    Job.fetch(queued[1], connection=conn).cancel()
    Queue("default", connection=conn).enqueue(RUNNER, "echo", {})
    assert dashboard_counts(dash) != api_counts(dash)
    repair_pass(index)
    expected = {Status.QUEUED: 4, Status.RUNNING: 0, Status.DONE: 2, Status.FAILED: 1}
    assert dashboard_counts(dash) == api_counts(dash) == {**expected, Status.CANCELED: 1}


def test_emptying_the_started_registry_drops_stale_entries(
    dash: FlaskClient, conn: redis.Redis
) -> None:
    """A started entry ("<id>:<execution id>") whose job is gone is removed as it is stored."""
    conn.sadd("rq:queues", "rq:queue:default")
    conn.zadd("rq:wip:default", {"gone-job:execution-1": 1})
    resp = dash.post("/dashboard/queue/default/started/empty", headers=LOGIN)
    assert resp.status_code == 200 and resp.get_json() == {"status": "OK", "count": 0}
    assert conn.zcard("rq:wip:default") == 0
