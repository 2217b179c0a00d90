"""GET /openapi.json and /docs/: a valid OpenAPI 3.1 description of exactly the routes the app
serves, and Swagger UI rendering it from the package's own files, both open to all."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.helpers import assert_envelope

DESCRIPTION = "/openapi.json"
PAGE = "/docs/"
# Routes outside the description: rq-dashboard's (its own app, behind HTTP Basic) and Flask's
# static files (the app has none).
UNDESCRIBED = re.compile(r"^/dashboard(/|$)|^/static/")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def description(client: FlaskClient) -> dict[str, Any]:
    """Return the served description, asserting it is JSON and needs no key."""
    resp = client.get(DESCRIPTION)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    return body


def served_operations(app: Flask) -> set[tuple[str, str]]:
    """Return (OpenAPI path, method) for every route of the app the description must cover."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or UNDESCRIBED.match(rule.rule):
            continue
        # `<path:path>` and `<name>` are OpenAPI's `{path}` and `{name}`.
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operations.add((path, method.lower()))
    return operations


def test_the_description_is_valid_openapi_3_1_and_needs_no_key(client: FlaskClient) -> None:
    """GET /openapi.json without a key answers a document valid under OpenAPI 3.1."""
    document = description(client)
    assert document["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert not errors, errors


def test_every_route_is_described_and_every_description_is_a_route(
    app: Flask, client: FlaskClient
) -> None:
    """The described (path, method) pairs are exactly the app's routes, dashboard aside."""
    paths = description(client)["paths"]
    described = {
        (path, method) for path, item in paths.items() for method in item if method in HTTP_METHODS
    }
    served = served_operations(app)
    assert ("/v1/toolkit/jobs", "post") in served
    assert served - described == set(), "served but not described"
    assert described - served == set(), "described but not served"


def test_every_operation_answers_as_described_when_refused(client: FlaskClient) -> None:
    """Each keyed operation describes its 401, each operation an answer; ids are unique."""
    document = description(client)
    ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            responses = operation["responses"]
            assert any(code.startswith("2") for code in responses), (path, method)
            security = operation.get("security", document["security"])
            if security and {} not in security:
                assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert len(ids) == len(set(ids)), ids


def test_the_description_follows_the_settings(make_app: Callable[..., Flask]) -> None:
    """The window's bound is the service's JOB_RETENTION_SECONDS; the body limit is named."""
    client = make_app(retention_seconds=3600, max_request_bytes=4096).test_client()
    document = description(client)
    query = document["components"]["schemas"]["ChangesQuery"]
    assert query["properties"]["since_seconds"]["maximum"] == 3600
    too_large = document["components"]["responses"]["TooLarge"]["description"]
    assert "4096 bytes" in too_large


class References(HTMLParser):
    """The files an HTML page loads: its scripts' `src` and its links' `href`."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Note the file a <script src> or <link href> names."""
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.found.append(value)


def test_the_page_renders_the_description_from_files_served_here(client: FlaskClient) -> None:
    """/docs/ is Swagger UI pointed at /openapi.json; its scripts, styles and icons all load
    from this service (no CDN), with no key."""
    resp = client.get(PAGE)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200, html
    assert resp.mimetype == "text/html"
    assert '"url": "/openapi.json"' in html
    # Swagger UI would otherwise send the description to validator.swagger.io.
    assert '"validatorUrl": null' in html
    parser = References()
    parser.feed(html)
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"} <= set(parser.found)
    for reference in parser.found:
        assert reference.startswith(PAGE), reference
        # Closed when read: a file answer holds its file open until then.
        with client.get(reference) as asset:
            assert asset.status_code == 200, reference
            assert asset.get_data(), reference


@pytest.mark.parametrize("path", ["/docs/no-such-file.js", "/docs/../api/openapi.py"])
def test_a_missing_page_file_is_an_enveloped_404(client: FlaskClient, path: str) -> None:
    """A file the page does not have answers the JSON envelope's 404."""
    body = assert_envelope(client.get(path), 404)
    assert body["message"] == "Not Found"


def test_docs_without_the_slash_moves_to_the_page(client: FlaskClient) -> None:
    """/docs answers a redirect to /docs/, in the envelope."""
    resp = client.get("/docs")
    body = assert_envelope(resp, 308)
    assert resp.headers["Location"].endswith(PAGE)
    assert body["message"].startswith("Moved to")
