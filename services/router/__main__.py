"""``python -m services.router``: run the REST router from ``SLLM_*`` settings."""

from __future__ import annotations

import sys

import uvicorn

from libs.common.logs import setup_logging

from .app import RouterService, create_app
from .settings import RouterSettings


def main() -> int:
    settings = RouterSettings.from_env()
    setup_logging(settings.log_level, "router")
    svc = RouterService(settings)
    app = create_app(svc)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=settings.access_log,
            timeout_graceful_shutdown=10,
        )
    )
    server.run()
    if not server.started:
        return 2
    # A background loop that crashed for good shut the server down: say so to the supervisor.
    return 1 if svc.tasks.crashed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
