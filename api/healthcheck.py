"""`python -m api.healthcheck`: exit 0 when this host's API answers 200 on /health, else 1."""

from __future__ import annotations

import http.client
import sys

from shared.settings import from_env_or_exit

TIMEOUT = 3.0


def probe(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> tuple[bool, str]:
    """Return whether GET /health on `host`:`port` answers 200, and a line saying what it got."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    except OSError as exc:
        return False, f"GET http://{host}:{port}/health failed: {exc}"
    finally:
        conn.close()
    return status == 200, f"GET http://{host}:{port}/health: {status}"


def main() -> int:
    """Probe the API on the configured port; return the health check's exit status."""
    # Docker reserves 2; anything but 0 and 1 is an error of the check itself.
    settings = from_env_or_exit("healthcheck", status=1)
    healthy, line = probe(settings.port)
    sys.stdout.write(line + "\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
