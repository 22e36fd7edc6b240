"""Our gunicorn worker: uvicorn-worker's UvicornWorker plus the uvicorn settings it does not pass on.

uvicorn-worker forwards only keepalive, timeout, max_requests, forwarded_allow_ips and backlog. The
UVICORN_* knobs reach uvicorn through CONFIG_KWARGS, read when gunicorn creates each worker — so a
`make reload` (HUP) that re-renders the settings applies them to the new workers.
"""

import json
import sys
from typing import Any

import uvicorn_worker
from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn.server import logger as uvicorn_logger

from service import lifecycle
from service.settings import load_settings


class DrainAwareServer(Server):
    def handle_exit(self, sig: int, frame: Any) -> None:
        lifecycle.draining.set()
        super().handle_exit(sig, frame)


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = load_settings()
        self.CONFIG_KWARGS = {
            "loop": settings.uvicorn_loop,
            "http": settings.uvicorn_http,
            "limit_concurrency": settings.uvicorn_limit_concurrency or None,
            "ws_ping_interval": settings.uvicorn_ws_ping_interval,
            "ws_ping_timeout": settings.uvicorn_ws_ping_timeout,
            "ws_max_size": settings.uvicorn_ws_max_size,
            "timeout_graceful_shutdown": settings.uvicorn_timeout_graceful_shutdown,
            "access_log": False,
            "server_header": False,
        }
        super().__init__(*args, **kwargs)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainAwareServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


async def json_service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps(
        {
            "status": 503,
            "error": "over_capacity",
            "detail": "worker is at UVICORN_LIMIT_CONCURRENCY; retry",
            "layer": "uvicorn",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def answer_over_capacity_in_json() -> None:
    # uvicorn answers limit_concurrency overflow with a text/plain 503 from a module-level function that
    # each HTTP protocol module imports by name; replace it there so every client-visible error is JSON.
    import importlib

    for name in ("h11_impl", "httptools_impl"):
        try:
            module = importlib.import_module(f"uvicorn.protocols.http.{name}")
        except ImportError:
            continue
        if hasattr(module, "service_unavailable"):
            setattr(module, "service_unavailable", json_service_unavailable)  # noqa: B010
        else:
            uvicorn_logger.warning("uvicorn.protocols.http.%s has no service_unavailable to replace", name)


answer_over_capacity_in_json()
