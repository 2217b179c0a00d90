"""The README's "RQ's own tools": its `rq` command lines and Python recipe, run as written."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

import redis
from flask import Flask

from shared import keys
from shared.index import parse_transitions
from shared.status import Status
from tests.helpers import ROOT, Receiver, RedisServer, index_view, rq_view, run_rq, submit

README = ROOT / "README.md"
SECTION = "## RQ's own tools"


def readme_block(language: str) -> str:
    """Return the first fenced `language` block of the README's section on RQ's own tools."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match is not None, f"no {language} block in {SECTION}"
    return match.group(1)


def readme_commands() -> dict[str, list[list[str]]]:
    """Return the README's `rq` command lines by subcommand, continuation lines joined."""
    joined = readme_block("sh").replace("\\\n", " ")
    commands: dict[str, list[list[str]]] = {}
    for line in joined.splitlines():
        if line.strip().startswith("rq "):
            argv = shlex.split(line)
            commands.setdefault(argv[1], []).append(argv)
    assert set(commands) == {"worker", "requeue", "empty"}, commands
    return commands


def run_readme_rq(argv: list[str], server: RedisServer, *extra: str, **env: str) -> str:
    """Run one README `rq` command against the test Redis; return its output."""
    args = [server.url if a == "$REDIS_URL" else a for a in argv[1:]] + list(extra)
    return run_rq(server, args, **env)


def test_readme_delivery_worker_delivers_the_webhook(
    make_app: Callable[..., Flask], conn: redis.Redis, redis_server: RedisServer
) -> None:
    """The README's second rq worker line delivers the webhook of a job the first one ran."""
    jobs_worker, deliveries_worker = readme_commands()["worker"]
    client = make_app(webhook_allow_private=True).test_client()
    with Receiver() as receiver:
        job_id = submit(client, "echo", {"n": 1}, webhook_url=receiver.url)
        run_readme_rq(jobs_worker, redis_server, "--burst")
        assert receiver.hits == []
        run_readme_rq(deliveries_worker, redis_server, "--burst", WEBHOOK_ALLOW_PRIVATE="true")
        [hit] = receiver.hits
    assert hit.json()["job_id"] == job_id
    assert hit.json()["job_status"] == "done"
    assert index_view(conn) == {job_id: Status.DONE}


def test_readme_rq_commands_serve_http_jobs_and_keep_the_index_exact(
    make_app: Callable[..., Flask], conn: redis.Redis, redis_server: RedisServer
) -> None:
    """The README's rq worker, requeue and empty lines record every change at once."""
    commands = readme_commands()
    client = make_app().test_client()
    done = submit(client, "echo", {"n": 1})
    failed = submit(client, "fail", {"message": "once"})

    # The job worker, then the delivery worker: one queue each.
    jobs_worker, deliveries_worker = commands["worker"]
    assert jobs_worker[-1] == "default"
    assert deliveries_worker[-1] == keys.webhook_queue_name("default")
    run_readme_rq(jobs_worker, redis_server, "--burst")
    assert index_view(conn) == rq_view(conn) == {done: Status.DONE, failed: Status.FAILED}
    assert parse_transitions(conn.hgetall(keys.transitions_key())) == {
        ("new", "queued"): 2,
        ("queued", "running"): 2,
        ("running", "done"): 1,
        ("running", "failed"): 1,
    }

    [requeue] = commands["requeue"]
    run_readme_rq(requeue, redis_server)
    assert index_view(conn) == rq_view(conn) == {done: Status.DONE, failed: Status.QUEUED}

    waiting = submit(client, "echo", {"n": 2})
    assert index_view(conn)[waiting] is Status.QUEUED
    [empty] = commands["empty"]
    run_readme_rq(empty, redis_server)
    assert index_view(conn) == rq_view(conn) == {done: Status.DONE}


def test_readme_python_recipe_enqueues_and_cancels_through_the_index(
    conn: redis.Redis, redis_server: RedisServer
) -> None:
    """The README's Python recipe, pointed at the test Redis, leaves the job canceled in both."""
    recipe = readme_block("python").replace("redis://127.0.0.1:6379/0", redis_server.url)
    namespace: dict[str, object] = {}
    exec(compile(recipe, str(README), "exec"), namespace)
    job_id = namespace["job"].id  # type: ignore[attr-defined]
    assert index_view(conn) == rq_view(conn) == {job_id: Status.CANCELED}
