"""gunicorn.conf.py: the gevent worker, and its count, connection cap and header timeout."""

from __future__ import annotations

import runpy

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
