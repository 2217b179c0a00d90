"""A minimal Celery app for the peer benchmark: one no-op task, results ignored.

The broker is given on the command line (`celery -A bench.celery_app -b URL ...`) or set on
`app.conf` by the benchmark, so importing this module reads no configuration.
"""

from __future__ import annotations

from celery import Celery

app = Celery("bench")
app.conf.update(
    # Flower reads task states from events, never from a result backend.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # A solo worker fetching messages in batches keeps holding 10^5 tasks within minutes.
    worker_prefetch_multiplier=100,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing."""
