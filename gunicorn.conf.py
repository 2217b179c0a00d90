"""gunicorn settings for `gunicorn 'api:create_app()'` (read from the working directory)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

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


def _remove_private_dir(path: str, master_pid: int) -> None:
    """Remove the private metrics directory, from the gunicorn master only."""
    # atexit, not gunicorn's on_exit: a master that fails to start (port in use) skips
    # on_exit. Workers inherit the handler and exit through it too, hence the pid check.
    if os.getpid() == master_pid:
        shutil.rmtree(path, ignore_errors=True)


# prometheus_client's multiprocess mode: each worker writes its metrics to files in one
# directory and a scrape of any worker sums them all. The variable must be set here, in the
# master, before any worker imports prometheus_client (nothing in this file imports it at the
# top level for that reason). Unset, each start gets a private fresh directory.
_metrics_dir = _settings.prometheus_multiproc_dir
if _metrics_dir is None:
    _metrics_dir = tempfile.mkdtemp(prefix="toolkit-jobs-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    atexit.register(_remove_private_dir, _metrics_dir, os.getpid())


def on_starting(server: Any) -> None:
    """Remove metric files a previous run left in the directory, so counts start at zero."""
    for stale in Path(_metrics_dir).glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Let prometheus_client drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
