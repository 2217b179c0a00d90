"""The log formats: JSON lines and text lines."""

from __future__ import annotations

import json
import logging

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


def test_a_record_need_not_look_up_its_thread_process_or_caller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Once logging is configured, records skip the thread, process and caller lookups neither
    format shows."""
    for flag in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, True)
    monkeypatch.setattr(logging, "_srcfile", logging._srcfile)
    configure_logging("INFO")
    with caplog.at_level(logging.INFO):
        logging.getLogger("api.access").info("m")
    (record,) = caplog.records
    assert (record.thread, record.process, record.processName) == (None, None, None)
    assert (record.pathname, record.lineno) == ("(unknown file)", 0)
