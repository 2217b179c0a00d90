"""The common poll answered without Flask's dispatch: `POST /v1/toolkit/jobs/status` for a
whole window (docs/benchmarks.md, "HTTP floor").

Polls are most of the API's traffic, and Flask's request context, hooks, proxies and response
object cost a small poll more than its Redis read. This WSGI middleware answers the plain poll
itself: the key in `x-api-key`, a body with a Content-Length, and a query without `limit`,
`cursor`, `queue` or `task` whose window comes in one read. It does what the Flask path does,
through the same functions: the key check, the body reader and parser, the query check, the
index read, the envelope, the request id, the latency sample and the log line.

Every other request goes to Flask untouched. A poll the fast path cannot answer 200 goes to
Flask with a `Handover` of what was done (its timer, id, parsed body, and the window read or the
error met), so that errors keep one place where they are answered, and nothing is read or parsed
twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.wsgi import get_content_length

from api import feed
from api.access import account, request_id_of
from api.auth import API_KEY_HEADER, is_key
from api.body import body_of
from api.context import EXTENSION
from api.encoding import encode, statuses_json
from api.handover import HANDOVER, Handover
from shared.envelope import envelope
from shared.index import Window
from shared.wiring import Services

PATH = "/v1/toolkit/jobs/status"
ENDPOINT = "jobs.jobs_status"
WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]
# The WSGI names of the headers read here.
KEY_HEADER = "HTTP_" + API_KEY_HEADER.upper().replace("-", "_")
REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"


class FastPoll:
    """WSGI middleware: answer the plain poll, hand everything else to `app`'s own dispatch."""

    def __init__(self, app: Flask) -> None:
        self.flask: WsgiApp = app.wsgi_app
        svc: Services = app.extensions[EXTENSION]
        self._svc = svc
        self._key = svc.settings.require_api_key().encode()
        self._cursor_key = feed.cursor_key(svc.settings.require_api_key())
        self._limit: int = app.config["MAX_CONTENT_LENGTH"]
        # The latency histogram's route label and Flask's own rule for it: the same series.
        self._rule = next(
            rule for rule in app.url_map.iter_rules(ENDPOINT) if "POST" in (rule.methods or ())
        )

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Answer `environ`'s request (PEP 3333)."""
        if (
            environ.get("PATH_INFO") != PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("SCRIPT_NAME")
        ):
            return self.flask(environ, start_response)
        length = get_content_length(environ)
        # A missing or wrong key, a chunked or oversized body: Flask's answers, untouched.
        if (
            length is None
            or length > self._limit
            or not is_key(environ.get(KEY_HEADER, ""), self._key)
        ):
            return self.flask(environ, start_response)
        return self._poll(environ, start_response)

    def _poll(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = request_id_of(environ.get(REQUEST_ID_HEADER, ""))
        settings = self._svc.settings
        try:
            body = body_of(environ, self._limit, settings.body_timeout)
        except Exception as exc:
            # Too slow, cut short, not JSON: Flask answers it as it would have.
            return self._hand_over(environ, start_response, Handover(started, request_id, exc))
        try:
            query = feed.from_body(body, settings.retention_seconds, key=self._cursor_key)
        except Exception:
            # Flask checks the same body again and answers the same 400 (or its 500).
            return self._hand_over(environ, start_response, Handover(started, request_id, body))
        if query.limit is not None or query.facets:
            return self._hand_over(environ, start_response, Handover(started, request_id, body))
        try:
            window = self._svc.index.window(
                query.start.seconds,
                settings.queue_name,
                after=query.start.after,
                statuses=query.listed,
                counts=query.counts,
            )
        except Exception as exc:
            handed = Handover(started, request_id, body, error=exc)
            return self._hand_over(environ, start_response, handed)
        if not window.complete:
            handed = Handover(started, request_id, body, window=window)
            return self._hand_over(environ, start_response, handed)
        try:
            answer = self._answer(body, window, started)
        except Exception as exc:
            # An error of ours: Flask's handler answers it (a JSON 500), as on its own path.
            handed = Handover(started, request_id, body, error=exc)
            return self._hand_over(environ, start_response, handed)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(answer))),
            ("X-Request-ID", request_id),
        ]
        duration_ms = (time.perf_counter() - started) * 1000
        account("POST", PATH, 200, duration_ms, request_id, self._rule)
        start_response("200 OK", headers)
        return [answer]

    def _answer(self, body: dict[str, Any], window: Window, started: float) -> bytes:
        settings = self._svc.settings
        return encode(
            envelope(
                code=200,
                message="success",
                id=body.get("id"),
                response=statuses_json(window.ids),
                run_time=time.perf_counter() - started,
                pid=os.getpid(),
                queue_id=settings.queue_name,
                queue_length=window.queue_length,
                build_number=settings.build_number,
                **feed.answer_fields(window.fence, None, window.counts),
            )
        )

    def _hand_over(
        self, environ: dict[str, Any], start_response: Any, handed: Handover
    ) -> Iterable[bytes]:
        environ[HANDOVER] = handed
        return self.flask(environ, start_response)
