"""The Procfile: its web and worker commands, run as a platform would run them."""

from __future__ import annotations

import os
import re
import shlex
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    BIN,
    ROOT,
    Process,
    free_port,
    running,
    submit_ok,
    wait_finished,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

ENTRY = re.compile(r"^([A-Za-z0-9_-]+):\s*(\S.*)$")


def procfile() -> dict[str, str]:
    """Return the Procfile's process types and their commands (without a leading `exec`)."""
    entries: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = ENTRY.match(line)
        assert match, f"not a Procfile entry: {line!r}"
        name, command = match.groups()
        assert name not in entries, f"{name} is declared twice"
        entries[name] = command.removeprefix("exec ")
    return entries


def test_procfile_declares_a_web_and_a_worker_process() -> None:
    """The Procfile runs web (gunicorn on 0.0.0.0:$PORT, 'api:create_app()') and the worker."""
    entries = procfile()
    assert set(entries) >= {"web", "worker"}
    web = shlex.split(entries["web"])
    assert web[0] == "gunicorn"
    assert "api:create_app()" in web
    binds = [web[i + 1] for i, arg in enumerate(web[:-1]) if arg in ("--bind", "-b")]
    binds += [arg.split("=", 1)[1] for arg in web if arg.startswith("--bind=")]
    assert binds == ["0.0.0.0:$PORT"]
    assert shlex.split(entries["worker"])[-2:] == ["-m", "worker"]


def test_procfile_commands_serve_a_job_end_to_end(env: dict[str, str]) -> None:
    """The Procfile's web and worker commands, run by bash with PORT set, serve a job to done."""
    entries = procfile()
    port = free_port()
    env = {**env, "PORT": str(port), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    web = Process(["bash", "-c", entries["web"]], env, name="procfile-web")
    worker = Process(["bash", "-c", entries["worker"]], env, name="procfile-worker")
    with running(web, worker):
        wait_healthy(web, port)
        assert f"Listening at: http://0.0.0.0:{port}" in web.output()
        job_id = submit_ok(port, "echo", {"from": "Procfile"})
        described = wait_finished(port, job_id)
        assert described["job_status"] == "done"
        assert described["result"] == {"from": "Procfile"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_honcho_runs_the_procfile_and_stops_cleanly(
    env: dict[str, str], tmp_path: Path, signum: int
) -> None:
    """`honcho start` serves a job to done; on SIGTERM/SIGINT both processes exit with status 0."""
    port = free_port()
    # honcho gives each process type its own PORT (base, base+100, ...), the base from --port;
    # a PORT in the environment would only be the default base. Its own .env would override
    # both, so point it at an empty one (the repository's .env is docker-compose's).
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    env = {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    honcho = Process(
        [
            str(BIN / "honcho"),
            "start",
            "--no-colour",
            "-f",
            "Procfile",
            "-e",
            str(empty_env),
            "-p",
            str(port),
        ],
        env,
        name="honcho",
    )
    with running(honcho):
        wait_healthy(honcho, port)
        assert f"Listening at: http://0.0.0.0:{port}" in honcho.output()
        job_id = submit_ok(port, "echo", {"from": "honcho"})
        described = wait_finished(port, job_id)
        assert described["job_status"] == "done"
        assert described["result"] == {"from": "honcho"}
        honcho.signal(signum)
        # honcho gives its processes 5 s after its SIGTERM before it kills them.
        assert honcho.popen.wait(timeout=20) == 128 + signum
    output = honcho.output()
    assert re.search(r"web\.1\s*\| .*Shutting down: Master", output), output
    for name in ("web.1", "worker.1"):
        assert f"{name} stopped (rc=0)" in output, output
    assert "SIGKILL" not in output, output
