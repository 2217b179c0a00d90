"""Fixtures of the API tests: an app whose Redis cannot be reached."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

UNREACHABLE_REDIS = "unix:///nonexistent/dir/redis.sock"


@pytest.fixture
def down_client(make_app: Callable[..., Flask]) -> FlaskClient:
    """Return a test client of an app whose Redis socket does not exist."""
    return make_app(redis_url=UNREACHABLE_REDIS, redis_timeout=0.5).test_client()
