"""gunicorn.conf.py takes its worker count from WEB_CONCURRENCY through Settings."""

from __future__ import annotations

import runpy

import pytest

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
