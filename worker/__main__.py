"""`python -m worker`: run one RQ worker on the configured queue."""

from __future__ import annotations

import sys

from shared.exceptions import ConfigError
from shared.logs import configure_logging
from shared.settings import Settings
from worker.main import run


def main() -> int:
    """Validate settings, then run the worker until it is stopped."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"worker: configuration error: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
