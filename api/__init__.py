"""The HTTP face of the service; gunicorn serves `api:create_app()` (built in `api.app`).

Importing the package stays light: the health probe (`python -m api.healthcheck`) runs every
30 s and needs none of Flask, RQ or the dashboard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.app import create_app as create_app


def __getattr__(name: str) -> Any:
    """Import `create_app` from `api.app` the first time someone asks for it."""
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
