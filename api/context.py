"""The services of the app handling the current request (built once by the app factory)."""

from __future__ import annotations

from flask import current_app

from shared.wiring import Services

EXTENSION = "toolkit_jobs"


def services() -> Services:
    """Return the services of the current app."""
    svc: Services = current_app.extensions[EXTENSION]
    return svc
