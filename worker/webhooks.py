"""Webhook delivery: the RQ work that POSTs a job's end to its webhook_url, signed.

Each delivery job (queued by the end's own record, shared/delivery.py) runs `deliver` once per
try. A try checks the address again and connects to the address it checked, POSTs the No-Code
Architects Toolkit completion envelope signed per Standard Webhooks, follows no redirect and
reads at most RESPONSE_CAP bytes of the answer. 2xx is delivered, 410 stops for good; anything
else fails the try, and RQ retries the job after its backoff (RQ's Retry, with the jittered
pauses the delivery job was created with) until the tries run out: then the delivery gave up.
The state hash says where it stands, for the single-job status; the outcome counts feed
/metrics. docs/webhooks.md has the body, the headers and a receiver.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis import Redis
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.utils import now

from shared import keys
from shared.addresses import (
    IPAddress,
    PrivateTargetError,
    UnresolvableTargetError,
    checked_addresses,
    url_host_port,
)
from shared.delivery import WebhookPolicy
from shared.envelope import envelope
from shared.job import TrackedJob, error_message
from shared.settings import WEBHOOK_SECRET_PREFIX, Settings
from shared.status import Status, from_rq

logger = logging.getLogger(__name__)

# How much of a receiver's answer is read: enough for an error message, never a flood.
RESPONSE_CAP = 1024
# The envelope's `code` for each end: a failure is the toolkit's 500; a canceled job has no
# failure of its own, so it says what nginx says of a request its client gave up on.
END_CODES = {Status.DONE: 200, Status.FAILED: 500, Status.CANCELED: 499}

# Update the delivery state hash KEYS[1] only while it belongs to this delivery (ARGV[1]): a
# job that ended again since has a newer delivery, whose state this one must not overwrite
# (returns 0; the try still happened, and is counted). Returns 1 when applied.
# ARGV[2]: "1" to count one more attempt; the rest, field/value pairs ("" deletes the field).
# A try's report never overwrites an outcome that ended the delivery (a work-horse left running
# by a worker killed outright reports after the retry that delivered): only a new try's start
# (ARGV[2] "1": RQ retried or requeued the delivery) moves on from one. Returns -1 then: the
# late report is neither applied nor counted.
STATE_LUA = """
if redis.call('HGET', KEYS[1], 'delivery') ~= ARGV[1] then return 0 end
local ended = {delivered = true, gone = true, refused = true, gave_up = true}
if ARGV[2] ~= '1' and ended[redis.call('HGET', KEYS[1], 'state')] then return -1 end
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""

_settings: Settings | None = None


class DeliveryError(Exception):
    """A try did not deliver; RQ retries the delivery job while it has tries left."""


class UnsendableError(Exception):
    """The URL cannot go out over HTTP (no try ever could): the delivery is refused."""


def configure(settings: Settings) -> None:
    """Use `settings` (the signing secret, WEBHOOK_ALLOW_PRIVATE) for the deliveries this
    process runs; a worker calls it once as it starts."""
    global _settings
    _settings = settings


@dataclass(frozen=True)
class Answer:
    """What a receiver answered: its HTTP status, and the start of its body."""

    status: int
    excerpt: str
    location: str | None


def deliver(job_id: str, ended: str) -> str:
    """POST the end `ended` of job `job_id` to its webhook; return the outcome, or raise
    DeliveryError for RQ to try again."""
    current = get_current_job()
    if current is None:
        raise RuntimeError("deliver runs as an RQ job")
    settings = _settings or Settings.from_env()
    connection = current.connection
    state = _State(connection, job_id, current.id)
    last_try = not current.retries_left
    state.update(count=True, state="delivering", next_attempt_at="")
    try:
        job = TrackedJob.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return state.finish("gave_up", error=f"job {job_id} no longer exists")
    policy = WebhookPolicy.of(job)
    if policy is None:
        return state.finish("gave_up", error=f"job {job_id} has no webhook")
    try:
        if settings.webhook_secret is None:
            raise DeliveryError("WEBHOOK_SECRET is not set on the worker: nothing is sent unsigned")
        body = json.dumps(completion_body(job, Status(ended), settings)).encode()
        answer = post(
            policy.url,
            body,
            signed_headers(settings.webhook_secret, current.id, int(time.time()), body),
            allow_private=settings.webhook_allow_private,
            timeout=policy.timeout_seconds,
        )
    except (PrivateTargetError, UnsendableError) as exc:
        return state.finish("refused", error=str(exc))
    except (DeliveryError, UnresolvableTargetError) as exc:
        state.fail(str(exc), current, last_try)
        raise DeliveryError(str(exc)) from None
    if 200 <= answer.status < 300:
        return state.finish("delivered", status=answer.status, delivered_at=time.time())
    if answer.status == 410:
        return state.finish("gone", status=410, error="the receiver answered 410 Gone")
    error = f"HTTP {answer.status}"
    if 300 <= answer.status < 400:
        error += f": redirect to {(answer.location or '?')[:200]} not followed"
    elif answer.excerpt:
        error += f": {answer.excerpt[:200]}"
    state.fail(error, current, last_try, status=answer.status)
    raise DeliveryError(error)


def completion_body(job: Job, ended: Status, settings: Settings) -> dict[str, Any]:
    """Return the toolkit's completion envelope for `job`'s end `ended`, plus `job_status`."""
    now = from_rq(job.get_status(refresh=False) or "queued")
    enqueued, started, finished = job.enqueued_at, job.started_at, job.ended_at
    queue_time = (started - enqueued).total_seconds() if started and enqueued else 0.0
    run_time = (finished - started).total_seconds() if finished and started else 0.0
    response: Any = None
    if now is not ended:
        message = f"{ended.value}; the job has since moved on ({now.value})"
    elif ended is Status.DONE:
        message, response = "success", job.return_value()
    elif ended is Status.FAILED:
        message = error_message(job) or "failed"
    else:
        message = "canceled"
    return envelope(
        code=END_CODES[ended],
        message=message,
        id=(job.meta or {}).get("client_id"),
        job_id=job.id,
        response=response,
        run_time=max(run_time, 0.0),
        queue_time=max(queue_time, 0.0),
        pid=os.getpid(),
        queue_id=job.origin,
        queue_length=int(job.connection.llen(keys.rq_queue_key(job.origin))),
        build_number=settings.build_number,
        job_status=ended.value,
    )


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the Standard Webhooks headers signing `body` with `secret` (whsec_<base64>)."""
    key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def post(
    url: str, body: bytes, headers: dict[str, str], *, allow_private: bool, timeout: float
) -> Answer:
    """POST `body` to `url` at an address checked just now, within three times `timeout` in all;
    raise DeliveryError on a network failure, PrivateTargetError or UnresolvableTargetError on a
    refused host, UnsendableError on a URL HTTP cannot carry."""
    parts = urlsplit(url)
    host, port = url_host_port(url)
    # Each step (the lookup, the connect, each read) has `timeout`; a receiver trickling its
    # answer a byte at a time would renew it forever, so the whole try also has a deadline.
    cut = _Deadline(3 * timeout)
    try:
        address = checked_addresses(url, allow_private=allow_private, timeout=timeout)[0]
        cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, address=address, timeout=timeout, deadline=cut)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(
                "POST",
                target,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "toolkit-jobs",
                    **headers,
                },
            )
            with conn.getresponse() as response:
                # A 2xx is a delivery whatever its body says; any other answer's body explains it.
                excerpt = "" if 200 <= response.status < 300 else _excerpt(response)
                answer = Answer(response.status, excerpt, response.getheader("Location"))
            if cut.fired:
                # Cut mid-answer: what was parsed (a status line in part, say) is no answer.
                raise OSError("cut at the deadline")
            return answer
        finally:
            conn.close()
    except (http.client.InvalidURL, UnicodeError) as exc:
        raise UnsendableError(f"webhook_url cannot be sent: {exc}") from None
    except TimeoutError:
        raise DeliveryError(f"no answer from {host} within {timeout} s") from None
    except (OSError, http.client.HTTPException) as exc:
        if cut.fired:
            raise DeliveryError(f"{host} did not answer in full within {3 * timeout:g} s") from None
        raise DeliveryError(f"{host}: {type(exc).__name__}: {exc}") from None
    finally:
        cut.cancel()


def _excerpt(response: http.client.HTTPResponse) -> str:
    try:
        return response.read(RESPONSE_CAP).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""  # the status says enough


class _Deadline:
    """Shut the try's socket down after `seconds`, unless cancelled first."""

    def __init__(self, seconds: float) -> None:
        # Held here, not read from the connection: http.client lets go of a connection's socket
        # once an answer says "Connection: close", while the body is still being read from it.
        self.sock: socket.socket | None = None
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        """Stop the timer (the try is over)."""
        self.timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a checked address; Host still names the URL's host."""

    def __init__(
        self, host: str, port: int, *, address: IPAddress, timeout: float, deadline: _Deadline
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.deadline = deadline

    def connect(self) -> None:
        """Connect to the checked address, never to a fresh DNS answer."""
        self.sock = self.deadline.sock = socket.create_connection(
            (str(self.address), self.port), self.timeout
        )


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address, verifying the certificate for the URL's host."""

    def __init__(
        self, host: str, port: int, *, address: IPAddress, timeout: float, deadline: _Deadline
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address
        self.deadline = deadline

    def connect(self) -> None:
        """Connect to the checked address and verify the certificate names the URL's host."""
        raw = socket.create_connection((str(self.address), self.port), self.timeout)
        # The handshake as a whole is bounded by the socket's timeout, which the wrapped socket
        # keeps; from then on the try's deadline can cut it too.
        wrapped = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]
        self.sock = self.deadline.sock = wrapped


class _State:
    """The delivery state hash of one job's latest end, as this delivery sees it."""

    def __init__(self, connection: Redis, job_id: str, delivery_id: str) -> None:
        self.connection = connection
        self.key = keys.delivery_state_key(job_id)
        self.delivery_id = delivery_id
        self.job_id = job_id

    def update(self, *, count: bool = False, **fields: Any) -> bool:
        """Set `fields` ("" deletes one) while the state is this delivery's; return whether the
        try's outcome counts (False: a late report of a delivery that had already ended)."""
        pairs = [str(x) for item in fields.items() for x in item]
        applied = self.connection.eval(STATE_LUA, 1, self.key, self.delivery_id, int(count), *pairs)
        return int(applied) != -1

    def finish(
        self,
        outcome: str,
        *,
        status: int | None = None,
        error: str | None = None,
        delivered_at: float | None = None,
    ) -> str:
        """Record an outcome that ends the delivery; return it."""
        if self.update(
            state=outcome,
            last_status=status if status is not None else "",
            last_error=error or "",
            delivered_at=delivered_at if delivered_at is not None else "",
        ):
            self._count(outcome)
        log = logger.info if outcome == "delivered" else logger.warning
        log("webhook of job %s: %s%s", self.job_id, outcome, f" ({error})" if error else "")
        return outcome

    def fail(self, error: str, current: Job, last_try: bool, status: int | None = None) -> None:
        """Record a failed try: retrying at the next attempt's time, or given up."""
        if last_try:
            if self.update(state="gave_up", last_status=status or "", last_error=error):
                self._count("failed")
                self._count("gave_up")
            logger.warning("webhook of job %s: gave up (%s)", self.job_id, error)
            return
        # When RQ's scheduler will find the retry due: it rounds the due time down to a second.
        next_at = math.floor(now().timestamp() + current.get_retry_interval())
        if self.update(
            state="retrying", last_status=status or "", last_error=error, next_attempt_at=next_at
        ):
            self._count("failed")
        logger.warning(
            "webhook of job %s: try failed (%s); next at %.0f", self.job_id, error, next_at
        )

    def _count(self, outcome: str) -> None:
        self.connection.hincrby(keys.deliveries_key(), outcome, 1)
