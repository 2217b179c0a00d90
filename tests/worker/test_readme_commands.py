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
from tests.helpers import ROOT, RedisServer, index_view, rq_view, run_rq, submit

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


def readme_commands() -> dict[str, list[str]]:
    """Return the README's `rq` command lines by subcommand, continuation lines joined."""
    joined = readme_block("sh").replace("\\\n", " ")
    commands = {}
    for line in joined.splitlines():
        if line.strip().startswith("rq "):
            argv = shlex.split(line)
            commands[argv[1]] = argv
    assert set(commands) == {"worker", "requeue", "empty"}, commands
    return commands


def run_readme_rq(argv: list[str], server: RedisServer, *extra: str) -> str:
    """Run one README `rq` command against the test Redis; return its output."""
    return run_rq(server, [server.url if a == "$REDIS_URL" else a for a in argv[1:]] + list(extra))


def test_readme_rq_commands_serve_http_jobs_and_keep_the_index_exact(
    make_app: Callable[..., Flask], conn: redis.Redis, redis_server: RedisServer
) -> None:
    """The README's rq worker, requeue and empty lines record every change at once."""
    commands = readme_commands()
    client = make_app().test_client()
    done = submit(client, "echo", {"n": 1})
    failed = submit(client, "fail", {"message": "once"})

    run_readme_rq(commands["worker"], redis_server, "--burst")
    assert index_view(conn) == rq_view(conn) == {done: Status.DONE, failed: Status.FAILED}
    assert parse_transitions(conn.hgetall(keys.transitions_key())) == {
        ("new", "queued"): 2,
        ("queued", "running"): 2,
        ("running", "done"): 1,
        ("running", "failed"): 1,
    }

    run_readme_rq(commands["requeue"], redis_server)
    assert index_view(conn) == rq_view(conn) == {done: Status.DONE, failed: Status.QUEUED}

    waiting = submit(client, "echo", {"n": 2})
    assert index_view(conn)[waiting] is Status.QUEUED
    run_readme_rq(commands["empty"], redis_server)
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
