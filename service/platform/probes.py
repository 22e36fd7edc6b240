"""The platform's own paths, answered before the app: liveness, readiness (503 while the worker drains)
and the Prometheus exposition. Each path is a knob (APP_LIVENESS_PATH, APP_READINESS_PATH,
APP_METRICS_PATH); `make check` refuses paths that would shadow a route of the app (loader.shadowed)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from service.platform import lifecycle, metrics
from service.platform.errors import REQUEST_ID, error_body, send_json
from service.platform.middleware import header
from service.platform.types import ASGIApp, Receive, Scope, Send

READ_ONLY = ("GET", "HEAD")
HOSTNAME = socket.gethostname()  # in a container: its short id


@dataclass(frozen=True)
class PlatformRoute:
    """What a probe puts in `scope["route"]`, as a router does: the metrics and the access line name it."""

    path: str


class Probes:
    def __init__(self, app: ASGIApp, liveness: str, readiness: str, metrics_path: str) -> None:
        self.app = app
        self.liveness, self.readiness, self.metrics = liveness, readiness, metrics_path
        self.routes = {path: PlatformRoute(path) for path in (liveness, readiness, metrics_path)}

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        head_only = scope["method"] == "HEAD"
        request_id = header(scope, REQUEST_ID)
        if scope["method"] not in READ_ONLY:
            detail = f"{route.path} is the platform's: GET or HEAD only"
            body = error_body(405, "method_not_allowed", detail, request_id)
            await send_json(send, 405, body, [(b"allow", b"GET, HEAD")])
        elif route.path == self.liveness:
            await send_json(send, 200, {"status": "ok"}, head_only=head_only)
        elif route.path == self.readiness:
            if lifecycle.draining.is_set():
                body = error_body(503, "draining", "worker is shutting down", request_id)
                await send_json(send, 503, body, head_only=head_only)
            else:
                # Which worker and host answered: stackctl tells containers behind nginx apart by `host`.
                body = {"status": "ready", "pid": os.getpid(), "host": HOSTNAME}
                await send_json(send, 200, body, head_only=head_only)
        else:
            payload, content_type = metrics.exposition()
            headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(payload))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head_only else payload})
