"""Logging set-up, done once per process by its entry point: text lines or JSON lines."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Structured fields that request and transition log lines carry (`extra=`), kept in JSON lines.
FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "job_id",
    "task",
    "from_status",
    "to_status",
    "duration_s",
)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line, with the structured fields it carries."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Format a record as TEXT_FORMAT, writing each second's timestamp text only once."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        # (second, its text), one attribute: threads logging at once never mix two seconds.
        self._stamp = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Return the record's time as logging.Formatter does (`2026-11-30 19:00:02,123`)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        # strftime is most of a request log line's formatting; within a second it repeats.
        second, stamp = self._stamp
        if second != int(record.created):
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(second))
            self._stamp = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send log lines to stderr at `level`, as text or JSON lines, one line per event."""
    # logging's module-wide switches (logProcesses, _srcfile: the docs' "Optimization" section)
    # would make each record cheaper, but they hold for every logger of the process: gunicorn's
    # own format writes %(process)d, and broke on the None they leave.
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    # basicConfig leaves a process that already has handlers (a test runner) alone.
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger().setLevel(level)
