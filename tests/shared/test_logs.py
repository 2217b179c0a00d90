"""The log formats: JSON lines and text lines."""

from __future__ import annotations

import json
import logging
import os

import pytest

from shared.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, configure_logging


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


@pytest.mark.parametrize("created", [1796065284.0005, 1796065284.9999, 1796065285.5, 86400.25])
def test_text_lines_read_as_the_standard_formatter_writes_them(created: float) -> None:
    """A text line is what logging.Formatter(TEXT_FORMAT) writes, timestamp to the ms, whichever
    second the formatter wrote before."""
    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for at in (created - 1, created, created + 0.001, created - 3600):
        record = logging.LogRecord("api.access", logging.INFO, __file__, 1, "GET %s", ("/",), None)
        record.created, record.msecs = at, (at - int(at)) * 1000
        assert ours.format(record) == standard.format(record)


def test_a_date_format_asked_for_is_honoured() -> None:
    """With an explicit datefmt the formatter writes it, as logging.Formatter does."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert TextFormatter().formatTime(record, "%Y") == logging.Formatter().formatTime(record, "%Y")


def test_configuring_leaves_other_formats_whole(caplog: pytest.LogCaptureFixture) -> None:
    """After configure_logging, a record still carries what other formats (gunicorn's
    `[%(process)d]`, a caller's file and line) write."""
    configure_logging("INFO")
    with caplog.at_level(logging.INFO):
        logging.getLogger("gunicorn.error").info("Worker exiting (pid: %s)", 7)
    (record,) = caplog.records
    gunicorn_format = logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(message)s")
    assert f"[{os.getpid()}] [INFO] Worker exiting (pid: 7)" in gunicorn_format.format(record)
    assert record.thread is not None and record.lineno > 0
