"""The JSON log format."""

from __future__ import annotations

import json
import logging

from shared.logs import JsonFormatter


def test_json_lines_carry_the_message_and_the_structured_fields() -> None:
    """A record becomes one JSON object with level, logger, message and its extra fields."""
    record = logging.LogRecord("api.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.request_id = "r1"
    record.status = 200
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "api.access"
    assert entry["message"] == "GET /x"
    assert entry["request_id"] == "r1" and entry["status"] == 200
    assert entry["ts"].endswith("+00:00")
