"""`create_app()`: the Flask app gunicorn serves, wired from settings."""

from __future__ import annotations

import logging

from flask import Flask
from redis.exceptions import RedisError

from api import actions, auth, health_endpoint, jobs, metrics, openapi
from api.access import finish_request, start_request
from api.context import EXTENSION
from api.dashboard import app as dashboard
from api.encoding import FastJSONProvider
from api.fast_poll import FastPoll
from api.handlers import register_error_handlers
from shared import tasks
from shared.logs import configure_logging
from shared.redis import TrustingConnectionPool, connect
from shared.settings import Settings
from shared.wiring import build_services

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Return the configured Flask app; refuse to build one without an API key."""
    settings = settings if settings is not None else Settings.from_env()
    settings.require_api_key()
    configure_logging(settings.log_level, settings.log_format)
    tasks.load(settings.task_modules, settings.max_result_bytes)

    app = Flask(__name__)
    # Werkzeug would answer a path with repeated slashes with an HTML redirect: no redirect,
    # the path simply matches no route (a JSON 404).
    app.url_map.merge_slashes = False
    app.json = FastJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    # Flask would answer OPTIONS itself with an empty text/html 200; let it be a JSON 405.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    # The API's Redis pool skips redis-py's per-checkout probe (shared/redis.py says why).
    svc = build_services(settings, connect(settings, TrustingConnectionPool))
    app.extensions[EXTENSION] = svc
    try:
        svc.index.mark()
    except RedisError as exc:
        # The API still starts: /health says 503 and calls answer 500 until Redis is back.
        logger.warning("could not write the index marker (Redis unavailable?): %s", exc)

    app.before_request(start_request)
    app.register_blueprint(health_endpoint.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    dashboard.mount(app, svc)
    app.after_request(finish_request)
    register_error_handlers(app)
    # Outermost: the plain poll is answered before Flask's dispatch (api/fast_poll.py).
    app.wsgi_app = FastPoll(app)  # type: ignore[method-assign]
    return app
