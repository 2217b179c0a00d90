"""Typed settings, read from the environment in one place and validated at start."""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from shared.exceptions import ConfigError

if TYPE_CHECKING:
    # Only a type here: the health probes import settings and nothing of logging's set-up.
    from shared.logs import LogFormat

T = TypeVar("T")

DAY = 24 * 60 * 60
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
WorkerClass = Literal["fork", "simple"]
# Their values may hold a password: an error names them but never repeats the value.
SECRET_VARIABLES = frozenset({"API_KEY", "REDIS_URL", "DASHBOARD_PASSWORD", "WEBHOOK_SECRET"})
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the form's prefix, not a secret)


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        value = int(raw.strip())
        if value < lo or (hi is not None and value > hi):
            upper = f" and <= {hi}" if hi is not None else ""
            raise ValueError(f"must be an integer >= {lo}{upper}")
        return value

    return cast


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def cast(raw: str) -> float:
        value = float(raw.strip())
        if not lo <= value <= hi:
            raise ValueError(f"must be a number between {lo} and {hi}")
        return value

    return cast


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return raw


def _queue_name(raw: str) -> str:
    if not QUEUE_NAME_RE.match(raw):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if raw.endswith(":webhooks"):
        raise ValueError("must not end in :webhooks (the name of a webhook delivery queue)")
    return raw


def _worker_class(raw: str) -> WorkerClass:
    if raw == "fork":
        return "fork"
    if raw == "simple":
        return "simple"
    raise ValueError("must be 'fork' or 'simple'")


def _modules(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for name in names:
        if not MODULE_RE.match(name):
            raise ValueError(f"{name!r} is not a dotted module name")
    return names


def _api_key(raw: str) -> str:
    if len(raw) < 8:
        raise ValueError("must be at least 8 characters")
    return raw


def _user(raw: str) -> str:
    # HTTP Basic puts a colon between user and password, so a user name cannot hold one.
    if ":" in raw or not raw.isprintable():
        raise ValueError("must be printable and hold no colon")
    return raw


def _directory(raw: str) -> str:
    # Only gunicorn's master uses it (and creates it); other processes given the same
    # environment, workers in containers of their own, need not have it.
    if not os.path.isabs(raw):
        raise ValueError("must be an absolute path")
    return raw


def _webhook_secret(raw: str) -> str:
    # The Standard Webhooks form: "whsec_" then the key in base64, 24 to 64 bytes.
    if not raw.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"must start with {WEBHOOK_SECRET_PREFIX} (the Standard Webhooks form)")
    try:
        key = base64.b64decode(raw.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"must be {WEBHOOK_SECRET_PREFIX} followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("must hold a key of 24 to 64 bytes")
    return raw


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _log_format(raw: str) -> LogFormat:
    if raw == "text":
        return "text"
    if raw == "json":
        return "json"
    raise ValueError("must be 'text' or 'json'")


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; build it with `Settings.from_env()`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    api_key: str | None = None
    max_queue_length: int = 0
    retention_seconds: int = 7 * DAY
    port: int = 8080
    queue_name: str = "default"
    worker_class: WorkerClass = "fork"
    task_modules: tuple[str, ...] = ()
    max_request_bytes: int = 1024 * 1024
    # Seconds a client has to send a request's line and headers, then its body (the server
    # set-up in docs/deployment.md); connections each API worker process serves at once.
    header_timeout: int = 10
    body_timeout: int = 30
    max_connections: int = 1000
    # Submissions are refused (503) once Redis's used memory reaches this percent of its
    # maxmemory, so that running jobs always have room for their results (docs/reliability.md).
    submit_memory_percent: int = 80
    # A job whose pickled result is larger fails with a clear error instead of filling Redis.
    max_result_bytes: int = 1024 * 1024
    redis_timeout: float = 2.0
    job_timeout: int = 3660
    maintenance_interval: int = 15
    # How often (s) a repair pass starts, across all workers; see docs/reliability.md.
    repair_interval: int = 30
    retry_after_seconds: int = 5
    webhook_allow_private: bool = False
    # Deliveries are signed with it (Standard Webhooks); without it a webhook_url is refused.
    webhook_secret: str | None = None
    # A delivery is tried this many times in all, the pause before try n+1 about
    # backoff * 2^(n-1) seconds (with jitter); each try connects and reads within the timeout.
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: int = 5
    webhook_timeout_seconds: float = 10.0
    # The Retry-After of a submission's 202: when a poll is first worth making.
    poll_after_seconds: int = 2
    build_number: str = "0.1.0"
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    dashboard_user: str = "admin"
    dashboard_password: str | None = None
    dashboard_port: int = 9181
    api_workers: int = 2
    # Where prometheus_client's multiprocess mode keeps each gunicorn worker's metric files;
    # gunicorn.conf.py makes a private one when unset. None: one process, plain metrics.
    prometheus_multiproc_dir: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Return settings cast and validated from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def read(name: str, cast: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return cast(raw)
            except ValueError as exc:
                shown = "" if name in SECRET_VARIABLES else f"={raw!r}"
                raise ConfigError(f"{name}{shown} is invalid: {exc}") from None

        return cls(
            redis_url=read("REDIS_URL", _redis_url, defaults.redis_url),
            api_key=read("API_KEY", _api_key, None),
            max_queue_length=read("MAX_QUEUE_LENGTH", _int(0), defaults.max_queue_length),
            retention_seconds=read(
                "JOB_RETENTION_SECONDS", _int(60, 365 * DAY), defaults.retention_seconds
            ),
            port=read("PORT", _int(1, 65535), defaults.port),
            queue_name=read("QUEUE_NAME", _queue_name, defaults.queue_name),
            worker_class=read("WORKER_CLASS", _worker_class, defaults.worker_class),
            task_modules=read("TASK_MODULES", _modules, defaults.task_modules),
            max_request_bytes=read(
                "MAX_REQUEST_BYTES", _int(1024, 64 * 1024 * 1024), defaults.max_request_bytes
            ),
            header_timeout=read("HEADER_TIMEOUT", _int(1, 300), defaults.header_timeout),
            body_timeout=read("BODY_TIMEOUT", _int(1, 3600), defaults.body_timeout),
            max_connections=read("MAX_CONNECTIONS", _int(10, 100_000), defaults.max_connections),
            submit_memory_percent=read(
                "SUBMIT_MEMORY_PERCENT", _int(1, 99), defaults.submit_memory_percent
            ),
            max_result_bytes=read(
                "MAX_RESULT_BYTES", _int(1024, 512 * 1024 * 1024), defaults.max_result_bytes
            ),
            redis_timeout=read("REDIS_TIMEOUT", _float(0.1, 60), defaults.redis_timeout),
            job_timeout=read("JOB_TIMEOUT", _int(1, 7 * DAY), defaults.job_timeout),
            maintenance_interval=read(
                "MAINTENANCE_INTERVAL", _int(1, DAY), defaults.maintenance_interval
            ),
            repair_interval=read("REPAIR_INTERVAL", _int(5, DAY), defaults.repair_interval),
            retry_after_seconds=read(
                "RETRY_AFTER_SECONDS", _int(1, 3600), defaults.retry_after_seconds
            ),
            webhook_allow_private=read(
                "WEBHOOK_ALLOW_PRIVATE", _bool, defaults.webhook_allow_private
            ),
            webhook_secret=read("WEBHOOK_SECRET", _webhook_secret, None),
            webhook_max_attempts=read(
                "WEBHOOK_MAX_ATTEMPTS", _int(1, 50), defaults.webhook_max_attempts
            ),
            webhook_backoff_seconds=read(
                "WEBHOOK_BACKOFF_SECONDS", _int(1, 3600), defaults.webhook_backoff_seconds
            ),
            webhook_timeout_seconds=read(
                "WEBHOOK_TIMEOUT_SECONDS", _float(0.1, 120), defaults.webhook_timeout_seconds
            ),
            poll_after_seconds=read(
                "POLL_AFTER_SECONDS", _int(1, 3600), defaults.poll_after_seconds
            ),
            build_number=read("BUILD_NUMBER", str, defaults.build_number),
            log_level=read("LOG_LEVEL", _log_level, defaults.log_level),
            log_format=read("LOG_FORMAT", _log_format, defaults.log_format),
            dashboard_user=read("DASHBOARD_USER", _user, defaults.dashboard_user),
            dashboard_password=read("DASHBOARD_PASSWORD", _api_key, None),
            dashboard_port=read("DASHBOARD_PORT", _int(1, 65535), defaults.dashboard_port),
            api_workers=read("WEB_CONCURRENCY", _int(1, 64), defaults.api_workers),
            prometheus_multiproc_dir=read("PROMETHEUS_MULTIPROC_DIR", _directory, None),
        )

    def __post_init__(self) -> None:
        # With webhooks on (a secret set), a delivery's tries must all come within the
        # retention: its state lives that long, and its job too. (The longest pauses drawn.)
        if self.webhook_secret is None:
            return
        span = sum(
            min(self.webhook_backoff_seconds * 2**n, 3600) + 1
            for n in range(self.webhook_max_attempts - 1)
        )
        if span >= self.retention_seconds:
            raise ConfigError(
                f"WEBHOOK_MAX_ATTEMPTS={self.webhook_max_attempts} with WEBHOOK_BACKOFF_SECONDS="
                f"{self.webhook_backoff_seconds} spreads a delivery's tries over up to {span} s, "
                f"not within JOB_RETENTION_SECONDS={self.retention_seconds}: fewer tries, a "
                "shorter backoff or a longer retention"
            )

    def require_api_key(self) -> str:
        """Return the API key, or raise ConfigError when none is configured."""
        if not self.api_key:
            raise ConfigError("API_KEY is not set: the API refuses to start without a key")
        return self.api_key

    def require_dashboard_password(self) -> str:
        """Return the dashboard password, or raise ConfigError when none is configured."""
        if not self.dashboard_password:
            raise ConfigError("DASHBOARD_PASSWORD is not set: the dashboard is never served open")
        return self.dashboard_password


def from_env_or_exit(
    program: str, status: int = 2, require: Callable[[Settings], object] | None = None
) -> Settings:
    """Return the settings (passing `require`), or exit with `status` and one line saying why."""
    try:
        settings = Settings.from_env()
        if require is not None:
            require(settings)
    except ConfigError as exc:
        # One clear line instead of a traceback (or, under a supervisor, a boot loop of them).
        sys.stderr.write(f"{program}: configuration error: {exc}\n")
        sys.exit(status)
    return settings
