"""Logging set-up, done once per process by its entry point."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Send log lines to stderr at `level`, one line per event."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().setLevel(level)
