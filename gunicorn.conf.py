"""gunicorn settings for `gunicorn 'api:create_app()'` (read from the working directory)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shared.settings import Settings, from_env_or_exit

# Fails before forking workers, with one clear line instead of a boot-loop traceback.
_settings = from_env_or_exit("api", require=Settings.require_api_key)

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


def _remove_private_dir(path: str, master_pid: int) -> None:
    """Remove the private metrics directory, from the gunicorn master only."""
    # atexit, not gunicorn's on_exit: a master that fails to start (port in use) skips
    # on_exit. Workers inherit the handler and exit through it too, hence the pid check.
    if os.getpid() == master_pid:
        shutil.rmtree(path, ignore_errors=True)


def on_starting(server: Any) -> None:
    """Give the workers an empty directory for prometheus_client's multiprocess mode."""
    # Each worker writes its metrics to files there and a scrape of any worker sums them all.
    # The variable is set here, in the master before it forks (and not when this file is
    # read, which tools and tests do too), so every worker's prometheus_client and Settings
    # see it. Without preload_app nothing imports prometheus_client in the master before.
    directory = _settings.prometheus_multiproc_dir
    if directory is None:
        directory = tempfile.mkdtemp(prefix="toolkit-jobs-metrics-")
        atexit.register(_remove_private_dir, directory, os.getpid())
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    Path(directory).mkdir(parents=True, exist_ok=True)
    # A directory reused from an earlier run holds its counts: start from zero.
    for stale in Path(directory).glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Let prometheus_client drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
