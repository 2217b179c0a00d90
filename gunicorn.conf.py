"""gunicorn settings for `gunicorn 'api:create_app()'` (read from the working directory)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import gevent
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from shared.settings import Settings, from_env_or_exit

# Fails before forking workers, with one clear line instead of a boot-loop traceback.
_settings = from_env_or_exit("api", require=Settings.require_api_key)


class LingeringGeventWorker(GeventWorker):
    """gunicorn's gevent worker, ending connections as its sync and gthread workers do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections waiting for their next request (or still sending its headers).
        self.idle: set[Any] = set()

    def run(self) -> None:
        """Serve until told to stop, ending idle connections as soon as that happens."""
        gevent.spawn(self._end_idle_connections)
        super().run()

    def _end_idle_connections(self) -> None:
        # gunicorn's gevent worker waits for every connection to end before it exits, and an
        # idle keep-alive one ends only at HEADER_TIMEOUT: a poller holding one would make each
        # stop last that long, and honcho or Docker kill the API before then. Ended now, the
        # greenlet waiting on it reads EOF and closes it; busy ones finish their request, and
        # gunicorn answers it with `Connection: close`.
        while self.alive:
            gevent.sleep(0.5)
        while True:
            for client in list(self.idle):
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
            gevent.sleep(0.5)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection, marking it idle whenever it waits for a request."""
        self.idle.add(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self.idle.discard(client)

    def handle_request(self, listener_name: Any, req: Any, client: Any, addr: Any) -> Any:
        """Serve one request, after the other connections had their turn: the connection is
        busy meanwhile."""
        self.idle.discard(client)
        # A greenlet runs until it waits. A keep-alive client sending its next request as soon
        # as it has the answer (on a fast network the request is already there to read) would
        # hold the worker through request after request while the other connections wait:
        # hundreds of ms at the 99th percentile (docs/benchmarks.md, "HTTP floor"). One turn
        # of the hub before each request serves the connections in turn.
        gevent.sleep(0)
        try:
            return super().handle_request(listener_name, req, client, addr)
        finally:
            self.idle.add(client)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer the error, then close without discarding the answer."""
        super().handle_error(req, client, addr, exc)
        # A request refused unread (a request line over 4 KiB, say) leaves bytes in the
        # socket; closing it then sends a RST that can destroy the answer before the client
        # reads it. gunicorn's own async worker closes abruptly; its sync and gthread workers
        # half-close and drain first (RFC 9112 9.6), as this does, cooperatively here.
        util.close_graceful(client)


bind = f"0.0.0.0:{_settings.port}"
workers = _settings.api_workers
# A connection, slow or waiting, costs a greenlet instead of a thread (docs/deployment.md).
# gunicorn monkey-patches each worker before it loads the app, so redis-py yields while it waits.
worker_class = LingeringGeventWorker
# The most connections one worker process holds at once; past it, it stops accepting.
worker_connections = _settings.max_connections
# The master recycles a worker silent for this long. A gevent worker reports from a greenlet of
# its own every second, so only an event loop held up this long (code that never yields) trips
# it: a request waiting on Redis (socket timeout REDIS_TIMEOUT) or on a slow client does not.
timeout = 30
graceful_timeout = 20
# In the gevent worker, reading each request's line and headers, a connection's first request
# included, runs under gevent.Timeout(keepalive) (gunicorn's base_async.handle): keepalive is
# the header read timeout, and how long an idle keep-alive connection is kept.
keepalive = _settings.header_timeout
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


# glibc malloc's knobs (malloc.h): below the mmap threshold a block comes from the heap; free
# heap at the top beyond the trim threshold goes back to the system.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
HEAP_BLOCKS_BELOW = 4 * 1024 * 1024
HEAP_KEPT = 32 * 1024 * 1024


def keep_heap() -> bool:
    """Have glibc keep a worker's freed answer buffers for the next request; return whether it
    took the settings (False elsewhere than glibc: musl, macOS)."""
    # By default glibc hands every block over its threshold (128 KiB at first) back to the
    # system when freed and faults it in afresh on the next request: each copy of a 10^4-job
    # answer (460 KB: the joined ids, the envelope, the response) page-faulted every time,
    # about 0.8 ms of a 2.5 ms request (docs/benchmarks.md, "HTTP floor"). Kept in the heap,
    # up to HEAP_KEPT of free memory stays with the worker between requests.
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW)) and bool(
        mallopt(M_TRIM_THRESHOLD, HEAP_KEPT)
    )


def post_fork(server: Any, worker: Any) -> None:
    """Tune the new worker's allocator (keep_heap)."""
    if not keep_heap():
        server.log.info("malloc left as it is (not glibc)")


def child_exit(server: Any, worker: Any) -> None:
    """Let prometheus_client drop a dead worker's live gauges (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
