"""gunicorn.conf.py: the gevent worker, its count, connection cap and header timeout, and the
workers' allocator."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import types

import pytest
from gunicorn.workers.ggevent import GeventWorker

from tests.helpers import API_KEY, ROOT

CONF = str(ROOT / "gunicorn.conf.py")


@pytest.mark.parametrize(("value", "workers"), [(None, 2), ("5", 5), ("1", 1)])
def test_workers_come_from_web_concurrency(
    monkeypatch: pytest.MonkeyPatch, value: str | None, workers: int
) -> None:
    """`workers` in gunicorn.conf.py is WEB_CONCURRENCY, or 2 when it is unset."""
    monkeypatch.setenv("API_KEY", API_KEY)
    if value is None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WEB_CONCURRENCY", value)
    assert runpy.run_path(CONF)["workers"] == workers


def test_bad_web_concurrency_stops_gunicorn_before_it_forks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An out-of-range WEB_CONCURRENCY exits with status 2 and a line naming the variable."""
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.setenv("WEB_CONCURRENCY", "0")
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(CONF)
    assert exited.value.code == 2
    assert "WEB_CONCURRENCY" in capsys.readouterr().err


def test_gevent_worker_with_connection_cap_and_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gunicorn runs gevent workers, MAX_CONNECTIONS each, with keepalive = HEADER_TIMEOUT."""
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.setenv("MAX_CONNECTIONS", "250")
    monkeypatch.setenv("HEADER_TIMEOUT", "7")
    conf = runpy.run_path(CONF)
    assert issubclass(conf["worker_class"], GeventWorker)
    assert "threads" not in conf
    assert conf["worker_connections"] == 250
    # The gevent worker reads every request's headers under gevent.Timeout(keepalive).
    assert conf["keepalive"] == 7


def test_connection_cap_and_header_timeout_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, MAX_CONNECTIONS is 1000 connections per worker and HEADER_TIMEOUT 10 seconds."""
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.delenv("MAX_CONNECTIONS", raising=False)
    monkeypatch.delenv("HEADER_TIMEOUT", raising=False)
    conf = runpy.run_path(CONF)
    assert (conf["worker_connections"], conf["keepalive"]) == (1000, 10)


# Four copies of a 10^4-job answer, as one request makes them, freed after each request.
FAULTS_SCRIPT = """
import resource, runpy, sys
if sys.argv[1] == "keep":
    assert runpy.run_path(sys.argv[2])["keep_heap"]() is True
def answer():
    ids = b"x" * 366_000
    fragment = b"{" + ids + b"}"
    envelope = b'{"response":' + fragment + b"}"
    return len(bytes(envelope))
for _ in range(5):
    answer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    answer()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    env = {**os.environ, "API_KEY": API_KEY}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, mode, CONF],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout
    return int(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_worker_keeps_its_answer_buffers_between_requests() -> None:
    """With keep_heap (each worker, after fork) large answers reuse the heap: no page faults
    from the sixth request on, where glibc's defaults fault every buffer in afresh."""
    assert _page_faults("default") > 2_000
    assert _page_faults("keep") < 100


def test_post_fork_tunes_each_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's post_fork hook is what applies keep_heap, logging when it cannot."""
    monkeypatch.setenv("API_KEY", API_KEY)
    conf = runpy.run_path(CONF)
    called: list[bool] = []
    conf["post_fork"].__globals__["keep_heap"] = lambda: called.append(True) or False
    logged: list[str] = []
    server = types.SimpleNamespace(log=types.SimpleNamespace(info=logged.append))
    conf["post_fork"](server, object())
    assert called == [True]
    assert logged == ["malloc left as it is (not glibc)"]


def test_each_request_waits_for_the_other_connections_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before serving a request, a worker lets every other ready connection (greenlet) run:
    a connection with its next request already there cannot hold the worker."""
    import gevent

    monkeypatch.setenv("API_KEY", API_KEY)
    worker_class = runpy.run_path(CONF)["worker_class"]
    order: list[str] = []
    monkeypatch.setattr(
        GeventWorker, "handle_request", lambda self, *args: order.append("this request")
    )
    worker = object.__new__(worker_class)
    worker.idle = set()
    client = object()
    other = gevent.spawn(order.append, "another connection")
    worker.handle_request("listener", object(), client, ("127.0.0.1", 1))
    other.join()
    assert order == ["another connection", "this request"]
    assert worker.idle == {client}
