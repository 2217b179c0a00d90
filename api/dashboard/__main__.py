"""`python -m api.dashboard`: serve the dashboard alone with gunicorn (the compose service)."""

from __future__ import annotations

from flask import Response
from gunicorn.app.base import BaseApplication
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from api.dashboard.app import PREFIX, create_dashboard_app
from shared.logs import configure_logging
from shared.settings import Settings, from_env_or_exit
from shared.wiring import build_services


def main() -> None:
    """Serve the dashboard alone with gunicorn on DASHBOARD_PORT (the compose service)."""
    settings = from_env_or_exit("dashboard", require=Settings.require_dashboard_password)
    configure_logging(settings.log_level, settings.log_format)
    # Served at /dashboard, the same address as inside the API; / redirects there.
    root = DispatcherMiddleware(
        Response(status=302, headers={"Location": f"{PREFIX}/"}),
        {PREFIX: create_dashboard_app(build_services(settings))},
    )

    class Standalone(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"0.0.0.0:{settings.dashboard_port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": 4,
                "timeout": 30,
                "control_socket_disable": True,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> DispatcherMiddleware:
            return root

    Standalone().run()


if __name__ == "__main__":
    main()
