"""gunicorn settings for `gunicorn 'api:create_app()'` (read from the working directory)."""

from __future__ import annotations

import sys

from shared.exceptions import ConfigError
from shared.settings import Settings

try:
    _settings = Settings.from_env()
    _settings.require_api_key()
except ConfigError as exc:
    # Fail before forking workers, with one clear line instead of a boot-loop traceback.
    sys.stderr.write(f"api: configuration error: {exc}\n")
    sys.exit(2)

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.api_workers
worker_class = "gthread"
threads = 4
# Every Redis call has a socket timeout far below this; a request that still takes this long
# is stuck, and the worker is recycled.
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = None
# gunicorn 25.1+ opens a control socket at one fixed per-user path; several instances on one
# host (two APIs, tests) would fight over it, and nothing here uses it.
control_socket_disable = True
