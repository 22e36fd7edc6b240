"""One pure-ASGI middleware for what every request needs: request id, deadline, metrics, JSON access log.

The deadline covers the time until the response starts (time to first byte), which is what nginx's
proxy_read_timeout also measures; a stream that has started is not cut. Handlers are not cancelled when a
client disconnects (starlette #297), so this deadline is what bounds abandoned work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import error_body

access_log = logging.getLogger("service.access")


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, request_timeout: float, access_log: bool = False) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.access_log = access_log and access_log_enabled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = header(scope, b"x-request-id") or uuid.uuid4().hex
        status = 500
        started = time.perf_counter()
        response_started = False
        metrics.IN_FLIGHT.inc()

        deadline = asyncio.timeout(self.request_timeout)

        async def send_with_context(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                deadline.reschedule(None)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_with_context)
        except TimeoutError:
            if response_started or not deadline.expired():
                raise
            status = 504
            detail = f"no response within APP_REQUEST_TIMEOUT={self.request_timeout:g}s"
            await send_json(send, 504, error_body(504, "request_timeout", detail, request_id), request_id)
        finally:
            metrics.IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            metrics.REQUESTS.labels(scope["method"], route, str(status)).inc()
            metrics.LATENCY.labels(route).observe(elapsed)
            if self.access_log:
                log_access(scope, status, elapsed, request_id)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False

        async def send_counting(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                metrics.WEBSOCKETS.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            if accepted:
                metrics.WEBSOCKETS.dec()


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_json(send: Send, status: int, body: object, request_id: str) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def access_log_enabled() -> bool:
    return access_log.isEnabledFor(logging.INFO)


def log_access(scope: Scope, status: int, elapsed: float, request_id: str) -> None:
    client = scope.get("client")
    access_log.info(
        json.dumps(
            {
                "ts": time.time(),
                "pid": os.getpid(),
                "request_id": request_id,
                "client": client[0] if client else None,
                "method": scope["method"],
                "path": scope["path"],
                "route": route_label(scope),
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
            }
        )
    )
