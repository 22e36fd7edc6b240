"""Our gunicorn worker: uvicorn-worker's UvicornWorker plus the uvicorn settings it does not pass on, and a
worker exit that loses nothing nginx sent.

uvicorn-worker forwards only keepalive, timeout, max_requests, forwarded_allow_ips and backlog. The
UVICORN_* knobs reach uvicorn through CONFIG_KWARGS, read when gunicorn creates each worker — so a
`make reload` (HUP) that re-renders the settings applies them to the new workers.

The drain (deploy/gunicorn.conf.py and docs/TUNING.md explain why): whatever ends a worker — HUP, TERM,
max_requests — it stops accepting, answers every request it still gets with `Connection: close`, never
closes an idle keep-alive connection itself (nginx closes its pooled ones after its keepalive_timeout; only
the GUNICORN_KEEPALIVE timer, which rule 1 puts later, or the deadline do), closes its WebSockets with 1012
spread over UVICORN_WS_CLOSE_SPREAD, and exits once no connection is left, at the latest after
UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN.

The app: the worker loads what gunicorn was told to serve (`wsgi_app`, APP_MODULE in
deploy/gunicorn.conf.py) with the platform's loader, and serves it inside the platform (asgi.Platform). An
app that does not load, or whose lifespan startup raises or outlasts APP_STARTUP_TIMEOUT, ends the worker
with gunicorn's APP_LOAD_ERROR or WORKER_BOOT_ERROR: the master then stops instead of booting it again.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import uvicorn_worker
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn.server import logger as uvicorn_logger

from service.platform import exits, lifecycle, loader, metrics
from service.platform.asgi import Platform
from service.platform.errors import CONNECTION_CLOSE
from service.platform.types import ASGIApp, Message, Receive, Scope, Send
from service.settings import load_settings

# After APP_STARTUP_TIMEOUT the platform itself fails a startup that still lets the loop run; the watchdog
# acts this much later, so that it only ever ends a worker whose loop is blocked.
STARTUP_WATCHDOG_GRACE_S = 1.0


class CloseWhenDraining:
    """Adds `Connection: close` to every HTTP response that starts while this worker drains, so nginx
    drops the connection from its upstream pool instead of sending it another request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not lifecycle.closing.is_set():
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CONNECTION_CLOSE]}
            await send(message)

        await self.app(scope, receive, send_closing)


class RecycleTurns:
    """The workers of one master take turns to recycle (max_requests): a worker stops accepting for its
    recycle only while another worker of that master accepts, so that a new connection, a WebSocket's
    reconnect above all, always finds one. gunicorn boots the replacement only after the exit, and two
    workers draining at once left nobody accepting for seconds. One file per accepting worker, named by
    its pid, in a directory named by the master's pid; a lock makes look-and-leave one step."""

    def __init__(self, directory: Path, pid: int, workers: int) -> None:
        self.directory, self.pid, self.workers = directory, pid, workers

    @classmethod
    def of_master(cls, master_pid: int, workers: int, tmp_dir: str | None = None) -> RecycleTurns:
        directory = Path(tmp_dir or tempfile.gettempdir()) / f"blueprint-workers-{master_pid}"
        return cls(directory, os.getpid(), workers)

    def accepting(self) -> None:
        self.directory.mkdir(exist_ok=True)
        (self.directory / str(self.pid)).touch()

    def stopped(self) -> None:
        (self.directory / str(self.pid)).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def my_turn(self) -> bool:
        if self.workers <= 1:
            return True  # nobody to wait for: gunicorn's own behaviour
        self.directory.mkdir(exist_ok=True)
        with open(self.directory / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            others = [
                path
                for path in self.directory.glob("[0-9]*")
                if int(path.name) != self.pid and alive(int(path.name))
            ]
            if others:
                self.stopped()
            return bool(others)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CountedConnections(set[Any]):
    """uvicorn's set of open connections (ServerState.connections), counting each HTTP connection added
    (every protocol adds itself when the connection is made; a WebSocket's protocol replaces the HTTP one
    it was upgraded from and is not counted again)."""

    def __init__(self, is_websocket: Callable[[Any], bool]) -> None:
        super().__init__()
        self.is_websocket = is_websocket

    def add(self, connection: Any) -> None:
        if not self.is_websocket(connection):
            metrics.CONNECTIONS_OPENED.inc()
        super().add(connection)


class DrainingServer(Server):
    def __init__(self, config: Config, ws_close_spread: float, turns: RecycleTurns | None = None) -> None:
        super().__init__(config)
        self.server_state.connections = CountedConnections(self.is_websocket)
        self.ws_close_spread = ws_close_spread
        self.turns = turns
        self.ws_closing: set[Any] = set()
        self.date_refreshed = 0.0
        self.signalled = False  # told to stop (TERM, HUP, QUIT): not a failure, even before it started
        self.listeners: list[socket.socket] = []
        self.listening_stopped = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.handing_over: set[asyncio.Task[Any]] = set()  # queued connections on their way to a protocol

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.listeners = list(sockets or [])
        await super().startup(sockets)
        if self.turns is not None and self.started:
            self.turns.accepting()

    def handle_exit(self, sig: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of whatever the loop was doing (a route blocking it,
        # too): the listening sockets are closed by a callback of the loop, which can serve what it accepts.
        self.signalled = True
        exits.leave_note(os.getpid(), "signal")
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop_listening)
        super().handle_exit(sig, frame)

    def stop_listening(self) -> None:
        """Stops accepting, then drains: from now on every response says Connection: close.

        When this process holds the last descriptor of a listening socket (a stopping container: gunicorn's
        master closed its own first), closing it resets every connection the kernel queued and nobody
        accepted yet, each with a request nginx may have written already (a POST it cannot retry: 502). So
        whatever is queued is accepted and served first, in the same callback as the close: nothing can
        queue in between. (A connection nginx opens after the close is refused, and nginx passes that
        request to another server.)"""
        if self.started and not self.listening_stopped:  # else startup has yet to create its servers
            self.listening_stopped = True
            for listener in self.listeners:
                self.accept_queued(listener)
            for server in self.servers:
                server.close()
            for listener in self.listeners:
                listener.close()
        if self.turns is not None:
            self.turns.stopped()
        lifecycle.closing.set()
        lifecycle.draining.set()

    def accept_queued(self, listener: socket.socket) -> None:
        loop = self.loop
        if loop is None:
            return
        for _ in range(max(1, self.config.backlog)):  # a listen queue holds at most `backlog`
            try:
                connection, _ = listener.accept()
            except OSError:  # BlockingIOError: nothing (left) in the queue
                return
            connection.setblocking(False)
            handover = loop.connect_accepted_socket(self.create_protocol, connection, ssl=self.config.ssl)
            task = loop.create_task(handover)
            self.handing_over.add(task)
            task.add_done_callback(self.handing_over.discard)

    def create_protocol(self) -> asyncio.Protocol:
        """What uvicorn's startup gives asyncio's create_server for each accepted connection."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Replaces uvicorn's Server.shutdown, which closes idle keep-alive connections at once: nginx may
        # have just written a request on one of them from its pool, and it retries no POST (502).
        loop = asyncio.get_running_loop()
        grace = self.config.timeout_graceful_shutdown
        if not self.should_exit:
            # max_requests, not a signal: gunicorn starts no replacement before this process is gone
            exits.leave_note(os.getpid(), "recycle")
            await self.wait_for_recycle_turn()
            lifecycle.closing.set()
            await self.serve_until_nginx_lets_go(loop, grace)
        self.stop_listening()

        started = loop.time()
        deadline = started + (math.inf if grace is None else grace)
        state = self.server_state
        uvicorn_logger.info(
            "drain: stopped accepting; %d connection(s) open, waiting up to %ss for nginx to let them go",
            len(state.connections),
            grace,
        )
        self.close_websockets(loop, spread=min(self.ws_close_spread, max(0.0, deadline - started - 1.0)))
        while (
            (state.connections or state.tasks or self.handing_over)
            and not self.force_exit
            and loop.time() < deadline
        ):
            self.close_websockets(loop, spread=0.0)
            await self.tick()

        if state.connections or state.tasks:
            uvicorn_logger.warning(
                "drain: %d connection(s), %d task(s) left after UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=%ss; "
                "closing them (keep it above NGINX_UPSTREAM_KEEPALIVE_TIMEOUT and the longest request)",
                len(state.connections),
                len(state.tasks),
                grace,
            )
            for connection in list(state.connections):
                connection.shutdown()
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
            await asyncio.sleep(0.1)
        else:
            uvicorn_logger.info("drain: done in %.2fs", loop.time() - started)

        if not self.force_exit:
            await self.lifespan.shutdown()

    async def wait_for_recycle_turn(self) -> None:
        """Serves on as before (no `Connection: close`) until another worker accepts (RecycleTurns)."""
        if self.turns is None or self.turns.my_turn():
            return
        uvicorn_logger.info("drain: request limit reached; serving on until another worker accepts")
        started = time.monotonic()
        while not self.should_exit and not self.turns.my_turn():
            await self.tick()
        uvicorn_logger.info("drain: my turn to recycle after %.2fs", time.monotonic() - started)

    async def serve_until_nginx_lets_go(self, loop: asyncio.AbstractEventLoop, grace: int | None) -> None:
        """Keeps accepting and serving, every response with `Connection: close`, until each HTTP connection
        that was open when the request limit was reached is gone, so that a recycling worker never leaves
        a gap nobody accepts in (two workers recycling together would)."""
        state = self.server_state
        pooled = {c for c in state.connections if not self.is_websocket(c)}
        uvicorn_logger.info(
            "drain: request limit reached; serving on with Connection: close until nginx lets go of "
            "%d connection(s)",
            len(pooled),
        )
        started = loop.time()
        deadline = started + (math.inf if grace is None else grace)
        while pooled & state.connections and not self.should_exit and loop.time() < deadline:
            await self.tick()
        left = len(pooled & state.connections)
        uvicorn_logger.info("drain: %d of them left after %.2fs", left, loop.time() - started)

    def is_websocket(self, connection: Any) -> bool:
        ws_class = self.config.ws_protocol_class
        return ws_class is not None and isinstance(connection, ws_class)

    def close_websockets(self, loop: asyncio.AbstractEventLoop, spread: float) -> None:
        """Closes each open WebSocket once, with 1012, at evenly spaced times over `spread` seconds, so
        that their clients do not all reconnect in the same instant."""
        fresh = [
            c for c in self.server_state.connections if self.is_websocket(c) and c not in self.ws_closing
        ]
        for index, connection in enumerate(fresh):
            self.ws_closing.add(connection)
            loop.call_later(spread * index / len(fresh), self.close_websocket, connection)

    def close_websocket(self, connection: Any) -> None:
        if connection in self.server_state.connections:
            connection.shutdown()

    async def tick(self) -> None:
        # What uvicorn's main loop did and no longer does once it has ended: tell gunicorn this worker is
        # alive (a drain longer than GUNICORN_TIMEOUT would be killed as hung) and keep the Date header.
        now = time.time()
        notify = self.config.callback_notify
        if notify is not None and now - self.last_notified > self.config.timeout_notify:
            self.last_notified = now
            await notify()
        if now - self.date_refreshed >= 1:
            self.date_refreshed = now
            date = [(b"date", formatdate(now, usegmt=True).encode())] if self.config.date_header else []
            self.server_state.default_headers = date + self.config.encoded_headers
        await asyncio.sleep(0.05)


def ws_frame_limit(message_limit: int) -> int:
    """The limit uvicorn gets: a message's limit plus what compressing incompressible data adds to it
    (measured: 1 MiB of random bytes from the `websockets` client became a 1.0025 MiB frame), with room."""
    return message_limit + (message_limit >> 7) + 64


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.settings = settings = load_settings()
        self.ws_close_spread = settings.uvicorn_ws_close_spread
        self.CONFIG_KWARGS = {
            "lifespan": "on",  # the platform speaks it for every app (lifespan.py)
            "loop": settings.uvicorn_loop,
            "http": settings.uvicorn_http,
            "limit_concurrency": settings.uvicorn_limit_concurrency or None,
            "ws": settings.uvicorn_ws,
            "ws_ping_interval": settings.uvicorn_ws_ping_interval,
            "ws_ping_timeout": settings.uvicorn_ws_ping_timeout,
            # websockets checks the limit against each frame as sent, compressed (permessage-deflate) or not,
            # and a compressed frame of incompressible data is larger than its message; the margin lets it
            # through, and the routes hold the message itself to UVICORN_WS_MAX_SIZE (routes.ws_echo).
            "ws_max_size": ws_frame_limit(settings.uvicorn_ws_max_size),
            "ws_per_message_deflate": bool(settings.uvicorn_ws_per_message_deflate),
            "timeout_graceful_shutdown": settings.uvicorn_timeout_graceful_shutdown,
            "access_log": False,
            "server_header": False,
        }
        super().__init__(*args, **kwargs)

    def load_wsgi(self) -> None:
        # The config file's wsgi_app first: gunicorn keeps the app name of its first start across a HUP.
        spec = self.cfg.wsgi_app or self.app.app_uri
        try:
            app = loader.load(spec, self.settings.app_src)
        except loader.AppLoadError as error:
            self.log.error("%s", error, exc_info=error.__cause__)
            raise AppImportError(str(error)) from error  # the arbiter prints it and stops: APP_LOAD_ERROR
        self.wsgi = app if isinstance(app, Platform) else Platform(app, self.settings, name=spec)

    async def _serve(self) -> None:
        self.config.app = CloseWhenDraining(self.wsgi)
        turns = RecycleTurns.of_master(self.ppid, self.cfg.workers, self.cfg.worker_tmp_dir)
        server = DrainingServer(config=self.config, ws_close_spread=self.ws_close_spread, turns=turns)
        self._install_sigquit_handler()
        watchdog = self.exit_if_startup_blocks(server)
        try:
            await server.serve(sockets=self.sockets)
        finally:
            watchdog.set()
        if not server.started:
            # A worker stopped while it started has not failed to boot: exiting 0 then keeps a master that
            # halts for another worker's failure from reaping a second WORKER_BOOT_ERROR in its halt, which
            # gunicorn raises as an uncaught HaltServer (exit 1 and a traceback).
            sys.exit(0 if server.signalled else Arbiter.WORKER_BOOT_ERROR)

    def exit_if_startup_blocks(self, server: DrainingServer) -> threading.Event:
        """The platform times the app's lifespan startup out on the event loop; a startup that blocks the
        loop (sync code) it cannot. This thread ends such a worker with WORKER_BOOT_ERROR, so that the
        master stops, where gunicorn's heartbeat would kill it after GUNICORN_TIMEOUT and boot it again.
        Set the returned event to stop watching."""
        platform: Platform = self.wsgi
        limit = self.settings.app_startup_timeout + STARTUP_WATCHDOG_GRACE_S
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                if server.started or platform.startup_ended:
                    return
                began = platform.startup_began
                if began is None or time.monotonic() - began < limit:
                    continue
                if server.signalled:
                    os._exit(0)  # stopping anyway; the blocked loop would hold it until graceful_timeout
                uvicorn_logger.error(
                    "APP_MODULE=%s: lifespan startup did not finish within APP_STARTUP_TIMEOUT=%gs and the "
                    "event loop is blocked (sync code in startup?); the worker exits",
                    platform.name,
                    self.settings.app_startup_timeout,
                )
                os._exit(Arbiter.WORKER_BOOT_ERROR)

        threading.Thread(target=watch, name="startup-watchdog", daemon=True).start()
        return done


async def json_service_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    metrics.UVICORN_REJECTED.inc()
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
                CONNECTION_CLOSE,
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


def close_refused_websockets_gracefully() -> None:
    # uvicorn's sans-I/O WebSocket closes the socket right after its close frame when it refuses a frame
    # (1009 above UVICORN_WS_MAX_SIZE, read from the frame's header): the rest of the frame, still arriving,
    # then makes the kernel reset the connection, and through nginx the reset can overtake the close frame
    # (the client sees 1006). Instead: the close frame, then our end of the stream (FIN), and the rest is
    # read and dropped until nginx closes, at the latest after uvicorn's close timeout.
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as Protocol

    refuse_at_once = Protocol.handle_parser_exception

    def handle_parser_exception(self: Protocol) -> None:
        if self.close_timer is not None:
            return  # called again for every read after the refusal: the data is dropped
        if not self.transport.can_write_eof():
            refuse_at_once(self)
            return
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code, "reason": close.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.write_eof()
        self.close_sent = True
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    Protocol.handle_parser_exception = handle_parser_exception  # type: ignore[method-assign]


answer_over_capacity_in_json()
close_refused_websockets_gracefully()
