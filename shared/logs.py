"""Logging set-up, done once per process by its entry point: text lines or JSON lines."""

from __future__ import annotations

import json
import logging
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


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send log lines to stderr at `level`, as text or JSON lines, one line per event."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    # basicConfig leaves a process that already has handlers (a test runner) alone.
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger().setLevel(level)
