"""`python -m worker`: run one RQ worker on the configured queue."""

from __future__ import annotations

import sys

from shared.logs import configure_logging
from shared.settings import from_env_or_exit
from worker.main import run


def main() -> int:
    """Validate settings, then run the worker until it is stopped."""
    settings = from_env_or_exit("worker")
    configure_logging(settings.log_level, settings.log_format)
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
