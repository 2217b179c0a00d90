"""`python -m worker.healthcheck`: exit 0 when a worker of this host is alive in RQ's registry."""

from __future__ import annotations

import socket
import sys

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.worker import BaseWorker

from shared.redis import connect
from shared.settings import from_env_or_exit


def live_workers(connection: Redis, queue_name: str, hostname: str) -> list[BaseWorker]:
    """Return the workers of `queue_name` registered from `hostname` whose registration is live."""
    # A worker's key expires when its heartbeats stop (RQ's worker TTL, renewed by every
    # heartbeat and sized to the job while a job runs), and Worker.all drops expired ones: a
    # listed worker has a recent heartbeat by RQ's own measure, on the worker's own clock.
    workers = Worker.all(connection=connection, queue=Queue(queue_name, connection=connection))
    return [worker for worker in workers if worker.hostname == hostname]


def main() -> int:
    """Look for a live worker of this host; return the health check's exit status."""
    settings = from_env_or_exit("healthcheck", status=1)
    hostname = socket.gethostname()
    connection = connect(settings)
    try:
        workers = live_workers(connection, settings.queue_name, hostname)
    except RedisError as exc:
        sys.stdout.write(f"Redis unavailable: {exc}\n")
        return 1
    finally:
        connection.close()
    if not workers:
        sys.stdout.write(f"no live worker of {hostname} on queue {settings.queue_name!r}\n")
        return 1
    for worker in workers:
        sys.stdout.write(
            f"{worker.name}: {worker.get_state()}, heartbeat {worker.last_heartbeat}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
