"""Settings are cast and validated from the environment, failing loudly with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.exceptions import ConfigError
from shared.settings import Settings

VARIABLES = [
    "REDIS_URL",
    "API_KEY",
    "MAX_QUEUE_LENGTH",
    "JOB_RETENTION_SECONDS",
    "PORT",
    "QUEUE_NAME",
    "WORKER_CLASS",
    "TASK_MODULES",
    "MAX_REQUEST_BYTES",
    "REDIS_TIMEOUT",
    "JOB_TIMEOUT",
    "MAINTENANCE_INTERVAL",
    "RETRY_AFTER_SECONDS",
    "BUILD_NUMBER",
    "LOG_LEVEL",
    "DASHBOARD_USER",
    "DASHBOARD_PASSWORD",
    "DASHBOARD_PORT",
    "WEB_CONCURRENCY",
    "PROMETHEUS_MULTIPROC_DIR",
]


def test_defaults_without_any_variable() -> None:
    """An empty environment gives the documented defaults."""
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.api_key is None
    assert settings.max_queue_length == 0
    assert settings.retention_seconds == 7 * 24 * 60 * 60
    assert settings.port == 8080
    assert settings.queue_name == "default"
    assert settings.worker_class == "fork"
    assert settings.task_modules == ()
    assert settings.max_request_bytes == 1024 * 1024
    assert settings.redis_timeout == 2.0
    assert settings.job_timeout == 3660
    assert settings.maintenance_interval == 15
    assert settings.webhook_allow_private is False
    assert settings.retry_after_seconds == 5
    assert settings.build_number == "0.1.0"
    assert settings.log_level == "INFO"
    assert settings.dashboard_user == "admin"
    assert settings.dashboard_password is None
    assert settings.dashboard_port == 9181
    assert settings.prometheus_multiproc_dir is None


@pytest.mark.parametrize("name", VARIABLES)
def test_empty_value_means_default(name: str) -> None:
    """A variable set to the empty string is treated as unset."""
    assert Settings.from_env({name: ""}) == Settings()


def test_values_are_cast(tmp_path: Path) -> None:
    """Every variable is read and cast to its type."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "unix:///tmp/redis.sock",
            "API_KEY": "k" * 8,
            "MAX_QUEUE_LENGTH": "10",
            "JOB_RETENTION_SECONDS": "60",
            "PORT": " 9000 ",
            "QUEUE_NAME": "jobs:high-1",
            "WORKER_CLASS": "simple",
            "TASK_MODULES": "a.b, c ,",
            "MAX_REQUEST_BYTES": "2048",
            "REDIS_TIMEOUT": "0.5",
            "JOB_TIMEOUT": "30",
            "MAINTENANCE_INTERVAL": "1",
            "RETRY_AFTER_SECONDS": "9",
            "BUILD_NUMBER": "1.2.3",
            "LOG_LEVEL": "debug",
            "DASHBOARD_USER": "ops team",
            "DASHBOARD_PASSWORD": "p" * 8,
            "DASHBOARD_PORT": "9999",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
    )
    assert settings == Settings(
        redis_url="unix:///tmp/redis.sock",
        api_key="k" * 8,
        max_queue_length=10,
        retention_seconds=60,
        port=9000,
        queue_name="jobs:high-1",
        worker_class="simple",
        task_modules=("a.b", "c"),
        max_request_bytes=2048,
        redis_timeout=0.5,
        job_timeout=30,
        maintenance_interval=1,
        retry_after_seconds=9,
        build_number="1.2.3",
        log_level="DEBUG",
        dashboard_user="ops team",
        dashboard_password="p" * 8,
        dashboard_port=9999,
        prometheus_multiproc_dir=str(tmp_path),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_QUEUE_LENGTH", "-1"),
        ("MAX_QUEUE_LENGTH", "abc"),
        ("MAX_QUEUE_LENGTH", "1.5"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("PORT", "http"),
        ("JOB_RETENTION_SECONDS", "59"),
        ("JOB_RETENTION_SECONDS", str(365 * 24 * 60 * 60 + 1)),
        ("JOB_RETENTION_SECONDS", "week"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "localhost:6379"),
        ("QUEUE_NAME", "has space"),
        ("QUEUE_NAME", "q" * 65),
        ("WORKER_CLASS", "thread"),
        ("WORKER_CLASS", "Fork"),
        ("TASK_MODULES", "a..b"),
        ("TASK_MODULES", "good, 1bad"),
        ("TASK_MODULES", "os;rm"),
        ("API_KEY", "short"),
        ("MAX_REQUEST_BYTES", "1023"),
        ("REDIS_TIMEOUT", "0"),
        ("REDIS_TIMEOUT", "61"),
        ("REDIS_TIMEOUT", "nan"),
        ("REDIS_TIMEOUT", "inf"),
        ("REDIS_TIMEOUT", "soon"),
        ("JOB_TIMEOUT", "0"),
        ("MAINTENANCE_INTERVAL", "0"),
        ("RETRY_AFTER_SECONDS", "3601"),
        ("LOG_LEVEL", "verbose"),
        ("WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("DASHBOARD_USER", "ad:min"),
        ("DASHBOARD_USER", "tab\there"),
        ("DASHBOARD_PASSWORD", "short"),
        ("DASHBOARD_PORT", "0"),
        ("WEB_CONCURRENCY", "0"),
        ("WEB_CONCURRENCY", "65"),
        ("WEB_CONCURRENCY", "many"),
        ("PROMETHEUS_MULTIPROC_DIR", "relative/metrics"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(name: str, value: str) -> None:
    """A malformed or out-of-range value raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(name)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("API_KEY", "hunter2"),
        ("REDIS_URL", "redis:/:s3cret-pass@cache.internal:6379/0"),
        ("DASHBOARD_PASSWORD", "hunter2"),
    ],
)
def test_rejected_secret_is_not_echoed(name: str, secret: str) -> None:
    """Rejecting a value that holds a secret names the variable without repeating the value."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: secret})
    message = str(caught.value)
    assert name in message
    assert "hunter2" not in message
    assert "s3cret-pass" not in message


def test_require_api_key_raises_without_a_key() -> None:
    """require_api_key raises ConfigError naming API_KEY when none is configured."""
    with pytest.raises(ConfigError, match="API_KEY"):
        Settings.from_env({}).require_api_key()


def test_require_api_key_returns_the_key() -> None:
    """require_api_key returns the configured key."""
    assert Settings.from_env({"API_KEY": "0123456789"}).require_api_key() == "0123456789"


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, from_env reads os.environ."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WORKER_CLASS", "simple")
    settings = Settings.from_env()
    assert (settings.port, settings.worker_class) == (9123, "simple")


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after they are built."""
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_web_concurrency_sets_the_api_workers() -> None:
    """WEB_CONCURRENCY (1-64, default 2) is read as the number of gunicorn workers."""
    assert Settings.from_env({}).api_workers == 2
    assert Settings.from_env({"WEB_CONCURRENCY": " 8 "}).api_workers == 8
    assert Settings.from_env({"WEB_CONCURRENCY": "64"}).api_workers == 64
