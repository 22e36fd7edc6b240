"""The base WebSocket users on websocket-client: one connection held per task, reconnecting when the
server restarts or leaves; an echo user timing round trips and a ticker user timing pushes."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import gevent
import websocket
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from locust import User, task
from locust.env import Environment

from loadtest.users.hooks import report_sample
from loadtest.users.options import KNOBS, option

# wss://: verified against SSL_CERT_FILE when set (the runner points it at a TLS stack's local CA), else
# against the system's CAs; never unverified.
WSS_OPTIONS = {"ca_certs": os.environ["SSL_CERT_FILE"]} if os.environ.get("SSL_CERT_FILE") else {}
RECONNECT_CODES = {1001: "going away", 1012: "service restart"}


class RawSocket(Protocol):
    """websocket.WebSocket's shutdown(): close the TCP socket now, without a close handshake."""

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str


class WebSocketUser(User):
    """A raw WebSocket user on websocket-client, which gevent makes cooperative (asyncio `websockets` would
    block Locust's loop). One task = one connection held for --ws-hold seconds. Connect time, round trips
    and pushes are reported as their own rows (request type WS); a close with 1012/1001 (the server
    restarting or leaving) is followed by a reconnect, reported as its own row; any other close fails.

    A receiving greenlet reads all the time: websocket-client answers the server's pings only inside recv().
    """

    abstract = True
    path = "/ws/echo"
    query = ""
    reconnect_codes: dict[int, str] = RECONNECT_CODES  # closes followed by a reconnect, not a failure

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        parts = urlsplit(self.host or "")
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = f"{scheme}://{parts.netloc}{self.path}{'?' + self.query if self.query else ''}"
        self.socket: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet[[websocket.WebSocket, AsyncResult[Closed]], None] | None = None
        self.closed: AsyncResult[Closed] = AsyncResult()
        self.inbox: Queue[str | bytes] = Queue()

    def report(
        self,
        what: str,
        started: float,
        length: int = 0,
        exception: Exception | None = None,
        response_time: float | None = None,
    ) -> None:
        report_sample(
            self.environment, "WS", f"{self.path} {what}", started, length, exception, response_time
        )

    def connect_url(self) -> str:
        """Where each connect goes (a room member adds the last id it got)."""
        return self.url

    def connect(self, what: str = "connect", attempts: int = 1) -> bool:
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                ws = websocket.create_connection(
                    self.connect_url(),
                    timeout=KNOBS.locust_client_timeout,
                    enable_multithread=True,
                    skip_utf8_validation=True,
                    sslopt=WSS_OPTIONS,
                )
            except Exception as error:
                if attempt == attempts:
                    self.report(what, started, exception=error)
                    return False
                gevent.sleep(0.5)
                continue
            self.report(what, started)
            self.socket, self.closed, self.inbox = ws, AsyncResult(), Queue()
            self.receiver = gevent.spawn(self.receive, ws, self.closed)
            return True
        return False

    def receive(self, ws: websocket.WebSocket, closed: AsyncResult[Closed]) -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    closed.set(Closed(code, data[2:].decode(errors="replace")))
                    return
                self.on_message(data.decode() if opcode == websocket.ABNF.OPCODE_TEXT else data)
        except websocket.WebSocketTimeoutException:
            closed.set(Closed(1006, f"nothing received for {KNOBS.locust_client_timeout:g}s"))
        except (websocket.WebSocketException, OSError) as error:
            closed.set(Closed(1006, str(error) or type(error).__name__))

    def on_message(self, data: str | bytes) -> None:
        self.inbox.put(data)

    def converse(self, deadline: float) -> None:
        """Use the open connection until `deadline` (time.monotonic) or until the server closes it."""
        self.closed.wait(timeout=max(0.0, deadline - time.monotonic()))

    @task
    def hold_connection(self) -> None:
        deadline = time.monotonic() + float(option(self.environment, "ws_hold", KNOBS.locust_ws_hold))
        if not self.connect():
            return
        while True:
            self.converse(deadline)
            if not self.closed.ready():
                break
            closed = self.closed.get()
            assert closed is not None  # receive() always sets a Closed
            self.hang_up()
            if closed.code not in self.reconnect_codes:
                error = ConnectionError(f"closed with {closed.code}: {closed.reason}")
                self.report("closed", time.perf_counter(), exception=error)
                return
            # The server is restarting or leaving: a new worker takes the connection (retried briefly).
            if time.monotonic() >= deadline or not self.connect(f"reconnect after {closed.code}", attempts=3):
                return
        self.hang_up()

    def hang_up(self) -> None:
        receiver, ws = self.receiver, self.socket
        self.receiver = self.socket = None
        if receiver is not None:
            receiver.kill(block=True, timeout=1)
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close(timeout=1)
            raw: RawSocket = ws
            raw.shutdown()

    def on_stop(self) -> None:
        self.hang_up()


class EchoRoundTrips(WebSocketUser):
    """Sends a message every `message_interval` seconds and times its echo."""

    abstract = True
    path = "/ws/echo"
    message_interval = 0.5

    def converse(self, deadline: float) -> None:
        sequence = 0
        while time.monotonic() < deadline and not self.closed.ready():
            sequence += 1
            text = json.dumps({"seq": sequence, "pad": "x" * 64})
            started = time.perf_counter()
            try:
                assert self.socket is not None
                self.socket.send(text)
                reply = self.inbox.get(timeout=KNOBS.locust_client_timeout)
            except Empty:
                if self.closed.wait(timeout=1) is None:
                    self.report("round-trip", started, exception=TimeoutError("no echo"))
                return
            except (websocket.WebSocketException, OSError) as error:
                if self.closed.wait(timeout=1) is None:
                    self.report("round-trip", started, exception=error)
                return
            if reply != text:
                self.report("round-trip", started, exception=ValueError("the echo differs from the message"))
            else:
                self.report("round-trip", started, length=len(reply))
            self.closed.wait(timeout=max(0.0, min(self.message_interval, deadline - time.monotonic())))


class TickerPushes(WebSocketUser):
    """Listens to server pushes; each push is a row whose time is its age (server `t` to arrival)."""

    abstract = True
    path = "/ws/ticker"
    interval = 0.5

    def __init__(self, environment: Environment) -> None:
        self.query = f"interval={self.interval}"
        super().__init__(environment)

    def on_message(self, data: str | bytes) -> None:
        arrived = time.time()
        try:
            push = json.loads(data)
            age = max(0.0, (arrived - float(push["t"])) * 1000)
        except (ValueError, KeyError, TypeError) as error:
            self.report("push", time.perf_counter(), len(data), exception=ValueError(f"bad push: {error}"))
            return
        self.report("push", time.perf_counter(), len(data), response_time=age)
