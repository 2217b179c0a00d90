"""Fixtures of the API tests: an app whose Redis cannot be reached; a count of body parses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import api.body

UNREACHABLE_REDIS = "unix:///nonexistent/dir/redis.sock"


@pytest.fixture
def down_client(make_app: Callable[..., Flask]) -> FlaskClient:
    """Return a test client of an app whose Redis socket does not exist."""
    return make_app(redis_url=UNREACHABLE_REDIS, redis_timeout=0.5).test_client()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Return the raw bodies api.body has parsed, one entry per parse."""
    seen: list[bytes] = []
    real = api.body.parse_body

    def counting(raw: bytes) -> dict[str, Any]:
        seen.append(raw)
        return real(raw)

    monkeypatch.setattr(api.body, "parse_body", counting)
    return seen
