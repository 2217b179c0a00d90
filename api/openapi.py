"""GET /openapi.json, the API's OpenAPI 3.1 description, and /docs/, the page rendering it.

Both are open: they describe the API and reveal no data. The page is Swagger UI as the
flask-swagger-ui package ships it (its template and assets, served from the package: no CDN).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask_swagger_ui import get_swaggerui_blueprint  # type: ignore[import-untyped]

from api import openapi_spec
from api.context import services

DESCRIPTION_PATH = "/openapi.json"
PAGE_PREFIX = "/docs"

bp = Blueprint("openapi", __name__)

# Swagger UI would send the description to validator.swagger.io for a badge: not from here.
_page = get_swaggerui_blueprint(
    PAGE_PREFIX,
    DESCRIPTION_PATH,
    config={"app_name": "toolkit-jobs API", "validatorUrl": None},
    blueprint_name="docs",
)
bp.register_blueprint(_page)


@bp.get(DESCRIPTION_PATH)
def description() -> Response:
    """Return the OpenAPI description of this service."""
    return jsonify(openapi_spec.build(services().settings))
