"""One pure-ASGI middleware for what every request needs: request id, deadline, metrics, JSON access log.

The deadline covers the time until the response starts (time to first byte), which is what nginx's
proxy_read_timeout also measures; a stream that has started is not cut. Handlers are not cancelled when a
client disconnects (starlette #297), so this deadline is what bounds abandoned work.

It runs on every request, so it is written to be cheap (docs/PERFORMANCE.md measures it): one timer per
event loop for all deadlines instead of one per request, metrics written once per loop turn
(service/platform/metrics.py), request ids without a syscall, and no work for the access line while it is
off.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterable

from service.platform import metrics
from service.platform.errors import REQUEST_ID, error_body, send_json
from service.platform.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("service.access")


def configure_logging(level: str) -> None:
    """The `service` loggers (the access line, the platform's and the demo's errors): one line each on
    stderr, which gunicorn's log collects."""
    logger = logging.getLogger("service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


class RequestIds:
    """Request ids for requests that come without one (nginx always sends one): 32 hex digits, a random
    half per process and a counter, so no syscall per request (os.urandom is one, uuid4 calls it)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


request_ids = RequestIds()


class Pending:
    """One request waiting for its first response byte."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.expired = False


class Deadlines:
    """The time-to-first-byte deadlines of one event loop's requests, on one timer.

    Every request gets the same timeout, so deadlines come due in the order requests start: a timer armed
    for the oldest pending deadline serves them all, where `asyncio.timeout` would create and cancel a
    timer per request. When it fires it cancels each request past its deadline, then re-arms for the
    oldest one left.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[Pending, None] = {}  # insertion-ordered: oldest deadline first
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> Pending:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new loop (tests run one app on several): forget the old one's
            self.loop, self.pending, self.timer = loop, {}, None
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a request must run in a task")
        entry = Pending(task, loop.time() + self.timeout)
        self.pending[entry] = None
        if self.timer is None:
            self.timer = loop.call_at(entry.deadline, self.expire)
        return entry

    def done(self, entry: Pending) -> None:
        self.pending.pop(entry, None)

    def expire(self) -> None:
        self.timer = None
        loop = self.loop
        if loop is None:
            return
        now = loop.time()
        while self.pending:
            entry = next(iter(self.pending))
            if entry.deadline > now:
                self.timer = loop.call_at(entry.deadline, self.expire)
                return
            del self.pending[entry]
            entry.expired = True
            entry.task.cancel()


class RequestContextMiddleware:
    """`fixed_routes`: route labels that never count toward `max_routes` (the platform's own paths)."""

    def __init__(
        self,
        app: ASGIApp,
        request_timeout: float,
        access_log: bool = False,
        max_routes: int = 100,
        fixed_routes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.access_log = access_log and access_log_enabled()
        self.deadlines = Deadlines(request_timeout)
        self.routes = metrics.RouteLabels(max_routes, fixed_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self.websocket(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return

        request_id = header(scope, REQUEST_ID) or request_ids.new()
        status = 500
        response_started = False
        started = time.perf_counter()
        deadlines = self.deadlines
        pending = deadlines.start()
        metrics.REQUEST_METRICS.started()

        async def send_with_context(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                deadlines.done(pending)
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except asyncio.CancelledError:
            # Ours only if the deadline fired before the first byte and nobody else cancelled the task.
            if response_started or not pending.expired or pending.task.uncancel() > pending.cancelling:
                raise
            status = 504
            detail = f"no response within APP_REQUEST_TIMEOUT={self.request_timeout:g}s"
            body = error_body(504, "request_timeout", detail, request_id)
            await send_json(send, 504, body, [(REQUEST_ID, request_id.encode())])
        finally:
            deadlines.done(pending)
            elapsed = time.perf_counter() - started
            route = self.routes.label(scope)
            metrics.REQUEST_METRICS.done(scope["method"], route, status, elapsed)
            if self.access_log:
                log_access(scope, route, status, elapsed, request_id)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False
        code: int | None = None  # how it ended: the first close either side made that the app saw

        async def receive_noting() -> Message:
            nonlocal code
            message = await receive()
            if message["type"] == "websocket.disconnect" and code is None:
                code = message.get("code", 1005)
            return message

        async def send_counting(message: Message) -> None:
            nonlocal accepted, code
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                metrics.REQUEST_METRICS.websocket_opened()
            elif message["type"] == "websocket.close" and code is None:
                code = message.get("code", 1000)
            await send(message)

        try:
            await self.app(scope, receive_noting, send_counting)
        finally:
            if accepted:
                metrics.REQUEST_METRICS.websocket_closed()
                metrics.WEBSOCKET_CLOSES.labels(metrics.websocket_close_label(code)).inc()


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def access_log_enabled() -> bool:
    return access_log.isEnabledFor(logging.INFO)


def log_access(scope: Scope, route: str, status: int, elapsed: float, request_id: str) -> None:
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
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
            }
        )
    )
