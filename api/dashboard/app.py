"""rq-dashboard as a Flask app of its own on the service's connection, mounted at /dashboard."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import rq_dashboard
from flask import Blueprint, Flask, Response
from redis import Redis
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from api.access import finish_request, start_request
from api.context import EXTENSION
from api.dashboard import guard
from api.encoding import FastJSONProvider
from api.errors import ApiError
from api.handlers import register_error_handlers
from shared.wiring import Services

logger = logging.getLogger(__name__)

PREFIX = "/dashboard"

# Answers /dashboard when no password is configured: refused, never open.
disabled_bp = Blueprint("dashboard_disabled", __name__)


@disabled_bp.route(PREFIX, methods=["GET", "HEAD", "POST"])
@disabled_bp.route(f"{PREFIX}/", methods=["GET", "HEAD", "POST"])
@disabled_bp.route(f"{PREFIX}/<path:rest>", methods=["GET", "HEAD", "POST"])
def disabled(rest: str = "") -> Response:
    """Refuse every dashboard page while DASHBOARD_PASSWORD is unset."""
    raise ApiError(403, "Dashboard disabled: set DASHBOARD_PASSWORD to enable it")


def mount(app: Flask, services: Services) -> None:
    """Serve the dashboard under /dashboard when a password is set, else refuse it there."""
    if services.settings.dashboard_password is None:
        app.register_blueprint(disabled_bp)
        return
    dashboard = create_dashboard_app(services)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {PREFIX: dashboard})  # type: ignore[method-assign]


def create_dashboard_app(services: Services) -> Flask:
    """Return rq-dashboard as its own Flask app, on the service's Redis connection."""
    settings = services.settings
    password = settings.require_dashboard_password()
    dashboard = Flask("rq_dashboard")
    # Werkzeug would answer a path with repeated slashes with an HTML redirect: no redirect,
    # the path simply matches no route (a JSON 404).
    dashboard.url_map.merge_slashes = False
    dashboard.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    dashboard.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    dashboard.json = FastJSONProvider(dashboard)
    # Shown in the page's instance picker: never the password or the query string.
    dashboard.config["RQ_DASHBOARD_REDIS_URL"] = [display_url(settings.redis_url)]
    dashboard.extensions[EXTENSION] = services
    dashboard.before_request(start_request)
    dashboard.register_blueprint(rq_dashboard.blueprint)
    # After the blueprint, so its requeue views can be replaced; app-wide hooks still run
    # before the blueprint's own.
    guard.install(dashboard, services, settings.dashboard_user, password)
    _use_connection(dashboard, services.redis)
    dashboard.after_request(finish_request)
    register_error_handlers(dashboard)
    return dashboard


def display_url(redis_url: str) -> str:
    """Return the Redis URL without credentials or query string, for display."""
    parts = urlsplit(redis_url)
    # The host and port as written ([::1]:6379 keeps its brackets), without user:password@.
    address = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{address}{parts.path}"


def _use_connection(dashboard: Flask, connection: Redis) -> None:
    """Point every dashboard view at `connection` (socket timeouts, one pool per process)."""
    # rq-dashboard's own hook opens a new client from the URL on every request, with no
    # timeouts; the views only read `current_app.redis_conn`, so set it once instead.
    dashboard.redis_conn = connection  # type: ignore[attr-defined]
    hooks = dashboard.before_request_funcs.get(rq_dashboard.blueprint.name, [])
    dashboard.before_request_funcs[rq_dashboard.blueprint.name] = [
        hook for hook in hooks if getattr(hook, "__name__", "") != "push_rq_connection"
    ]
    if len(dashboard.before_request_funcs[rq_dashboard.blueprint.name]) != len(hooks) - 1:
        raise RuntimeError("rq-dashboard's push_rq_connection hook not found: version changed?")
