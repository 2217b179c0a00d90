"""One .env configures compose: every ${VAR} is documented, every documented variable is used."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from shared.settings import Settings
from tests.deploy.files import compose, env_example
from tests.helpers import ROOT

# Read by docker-compose.yml's interpolation only, never by a service.
COMPOSE_ONLY = {"API_HOST_PORT", "DASHBOARD_HOST_PORT", "REDIS_MAXMEMORY"}
INTERPOLATED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])[^}]*)?\}")
# Compose would interpolate $VAR too; this file sticks to ${VAR} (and $$ for a literal $).
BARE = re.compile(r"(?<!\$)\$(?!\{|\$)")


class RecordingEnviron(dict[str, str]):
    """An empty environment that records every variable name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        """Record `key`, then look it up."""
        self.names.add(key)
        return super().get(key, default)


def settings_variables() -> set[str]:
    """Return the names of every variable Settings.from_env reads."""
    environ = RecordingEnviron()
    Settings.from_env(environ)
    return environ.names


def interpolated() -> set[str]:
    """Return the variables docker-compose.yml interpolates."""
    text = (ROOT / "docker-compose.yml").read_text()
    content = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not BARE.search(content), "docker-compose.yml uses a bare $VAR; write ${VAR}"
    return set(INTERPOLATED.findall(content))


def test_recording_environ_sees_the_settings_variables() -> None:
    """The recorder finds variables Settings reads, so the checks below compare real names."""
    assert {"REDIS_URL", "API_KEY", "PORT", "WEB_CONCURRENCY"} <= settings_variables()


def test_every_interpolated_variable_is_in_env_example() -> None:
    """Each ${VAR} of docker-compose.yml has a line in .env.example."""
    used = interpolated()
    assert used >= {"PORT", "API_HOST_PORT", "DASHBOARD_HOST_PORT"}
    missing = used - set(env_example())
    assert not missing, f"used in docker-compose.yml, missing from .env.example: {missing}"


def test_every_env_example_variable_is_a_setting_or_compose_only() -> None:
    """Each variable of .env.example is read by Settings or is one of the compose-only ones."""
    unknown = set(env_example()) - settings_variables() - COMPOSE_ONLY
    assert not unknown, f".env.example documents variables nothing reads: {sorted(unknown)}"
    assert interpolated() >= COMPOSE_ONLY, "a compose-only variable is no longer used"


def test_every_setting_is_in_env_example() -> None:
    """Each variable Settings reads is listed in .env.example."""
    missing = settings_variables() - set(env_example())
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"


def test_every_env_example_variable_has_a_comment() -> None:
    """Each variable line of .env.example is preceded by a comment documenting it."""
    previous = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            assert previous.startswith("#"), f"undocumented: {line}"
        previous = line


def test_env_example_values_are_valid_settings() -> None:
    """The example values pass Settings validation, and point REDIS_URL at the compose service."""
    variables = env_example()
    settings = Settings.from_env({**variables, "API_KEY": "an-example-key"})
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.log_format == "json"
    # Secrets are left for the operator to set.
    assert variables["API_KEY"] == ""
    assert variables["DASHBOARD_PASSWORD"] == ""


def test_env_file_is_git_ignored() -> None:
    """.env, which holds the secrets, is ignored by git while .env.example is not."""
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0
    example = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT, check=False)
    assert example.returncode == 1


def test_compose_services_share_the_one_env_file() -> None:
    """Every service built from our image reads its environment from .env."""
    for name, service in compose()["services"].items():
        if "build" in service:
            assert service["env_file"] == ".env", name
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
            assert "container_name" not in service, name
