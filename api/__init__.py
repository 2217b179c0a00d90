"""The HTTP face of the service: `create_app()` builds the Flask app gunicorn serves."""

from __future__ import annotations

import logging

from flask import Flask
from redis.exceptions import RedisError
from rq import Queue

from api import auth, health, jobs, metrics
from api.access import finish_request, start_request
from api.encoding import FastJSONProvider
from api.errors import register_error_handlers
from api.services import EXTENSION, Services
from shared.index import StatusIndex
from shared.job import tracked_job_class
from shared.logs import configure_logging
from shared.redis import connect
from shared.settings import Settings
from worker import registry

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Return the configured Flask app; refuse to build one without an API key."""
    settings = settings if settings is not None else Settings.from_env()
    settings.require_api_key()
    configure_logging(settings.log_level, settings.log_format)
    registry.load(settings.task_modules)

    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    # Flask would answer OPTIONS itself with an empty text/html 200; let it be a JSON 405.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    connection = connect(settings)
    index = StatusIndex(connection, settings.retention_seconds)
    job_class = tracked_job_class(index)
    queue = Queue(settings.queue_name, connection=connection, job_class=job_class)
    app.extensions[EXTENSION] = Services(settings, connection, index, job_class, queue)
    try:
        index.mark_registry()
    except RedisError as exc:
        # The API still starts: /health says 503 and calls answer 500 until Redis is back.
        logger.warning("could not write the registry marker (Redis unavailable?): %s", exc)

    app.before_request(start_request)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(metrics.bp)
    app.after_request(finish_request)
    register_error_handlers(app)
    return app
