"""The HTTP floor: a bare Flask app that answers POST /v1/toolkit/jobs/status with fixed bytes.

Served by gunicorn with the production gunicorn.conf.py (`gunicorn 'bench.bare:create_app()'`),
it costs what HTTP, gunicorn and Flask cost, and nothing of ours: bench/floor.py sets its
answer to the bytes the real endpoint gave for the same window.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response


def create_app() -> Flask:
    """Return the bare app; its answer is the file named by BARE_BODY_FILE."""
    body = Path(os.environ["BARE_BODY_FILE"]).read_bytes()
    app = Flask(__name__)

    @app.post("/v1/toolkit/jobs/status")
    def status() -> Response:
        return Response(body, mimetype="application/json")

    @app.get("/health")
    def health() -> Response:
        return Response(b"{}", mimetype="application/json")

    return app
