"""The load every drill runs under: wrk sending POST DRILL_POST and GET DRILL_GET through nginx (mixed.lua
counts the answers per method and status), WebSocket clients on DRILL_WS, one thread each, that send a
message every half second and expect it echoed, and reconnect whenever the server closes them, recording
every close code and failed reconnect, and room members with their publishers (loadtest/rooms.py), which
count every message a member missed."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import websocket

from loadtest.drill.plan import DEFAULTS, ROOMS, DrillError, LoadParams
from loadtest.host import find_wrk
from loadtest.rooms import Ledger
from loadtest.rooms import describe as failure_reason

LUA = Path(__file__).with_name("mixed.lua")
WRK_TIMEOUT_S = 30  # an answer slower than this is wrk's `timeout` error
SOCKET_ERRORS = ("connect", "read", "write", "timeout")
SEND_INTERVAL_S = 0.5
FIRST_ECHO_WITHIN_S = 5.0
WS_CONNECT_TIMEOUT_S = 5.0
WS_POLL_S = 0.5  # how often a receiving client looks at the stop flag
WS_RETRY_PAUSE_S = 0.1
NO_CLOSE_FRAME = 1006  # RFC 6455: the connection ended without a close frame
NO_STATUS = 1005


@dataclass
class HttpTally:
    """What wrk saw: answers per method and status, socket errors, latency."""

    responses: int = 0
    seconds: float = 0.0
    by_method: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_wrk(cls, data: dict[str, Any]) -> HttpTally:
        by_method: dict[str, dict[str, int]] = {}
        for key, count in data["statuses"].items():
            method, status = key.split(" ", 1)
            by_method.setdefault(method, {})[status] = int(count)
        return cls(
            responses=int(data["responses"]),
            seconds=int(data["duration_us"]) / 1e6,
            by_method={m: dict(sorted(s.items())) for m, s in sorted(by_method.items())},
            errors={kind: int(data["errors"][kind]) for kind in SOCKET_ERRORS},
            latency_ms={k: float(v) for k, v in data["latency_ms"].items()},
        )

    @property
    def sent(self) -> int:
        """Requests that went out: answered, or lost with their connection before the answer (read errors).
        A write error is a request that could not be written (the connection was refused or reset)."""
        return self.responses + self.errors.get("read", 0)

    @property
    def rate(self) -> float:
        return self.responses / self.seconds if self.seconds else 0.0

    def failures(self) -> dict[str, int]:
        """Every failure by kind: `POST 502` (a status outside 2xx, per method), then wrk's socket errors."""
        found = {
            f"{method} {status}": n
            for method, statuses in self.by_method.items()
            for status, n in statuses.items()
            if not status.startswith("2") and n
        }
        return found | {kind: n for kind, n in self.errors.items() if n}


class Wrk:
    """wrk running mixed.lua against `url` until stop(); its JSON summary then becomes an HttpTally."""

    def __init__(self, url: str, params: LoadParams, out_dir: Path, wrk: str | None = None) -> None:
        self.command = [
            wrk or find_wrk(),
            f"-t{params.threads}",
            f"-c{params.connections}",
            "-d3600s",  # stopped by SIGINT, after which wrk still summarises and calls done()
            "--timeout",
            f"{WRK_TIMEOUT_S}s",
            "-s",
            str(LUA),
            url,
        ]
        self.out = out_dir / "wrk.json"
        self.log = out_dir / "wrk.txt"
        self.env = {
            **os.environ,
            "DRILL_WRK_OUT": str(self.out),
            "DRILL_WRK_DELAY_MS": str(params.delay_ms()),
            "DRILL_WRK_POST": params.post,
            "DRILL_WRK_BODY": params.body,
            "DRILL_WRK_GET": params.get,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.out.unlink(missing_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def stop(self) -> HttpTally:
        if self.process is None:
            return HttpTally()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=WRK_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            return HttpTally.from_wrk(json.loads(self.out.read_text()))
        except (OSError, ValueError, KeyError) as error:
            tail = " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
            raise DrillError(f"wrk wrote no summary ({error}); its output: {tail or 'none'}") from None


@dataclass
class WsTally:
    clients: int = 0
    connects: int = 0
    closes: dict[str, int] = field(default_factory=dict)  # close code -> count
    failed_reconnects: dict[str, int] = field(default_factory=dict)  # reason -> count
    longest_gap_s: float = 0.0
    echoes: int = 0
    wrong_echoes: int = 0
    slowest_connects_s: list[float] = field(default_factory=list)  # the 5 slowest handshakes, failed ones too


class RawSocket(Protocol):
    """websocket.WebSocket's shutdown() (untyped there): close the TCP socket without a handshake."""

    def shutdown(self) -> None: ...


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else NO_STATUS


class EchoClients:
    """N WebSockets on `path`, each in its own thread: connect, send a message every SEND_INTERVAL_S and
    expect it echoed, and when the server closes (or the connection drops), record the code and connect
    again, until stop()."""

    def __init__(self, ws_url: str, count: int, path: str = DEFAULTS.drill_ws) -> None:
        self.path = path
        self.url = f"{ws_url}{path}"
        self.count = count
        self.stopping = threading.Event()
        self.reconnecting = threading.Event()
        self.reconnecting.set()
        self.lock = threading.Lock()
        self.connects = 0
        self.echoes = 0
        self.echoed_once: set[int] = set()  # clients whose first message came back
        self.wrong = 0  # answers that were not the message sent
        self.first_wrong = ""
        self.closes: Counter[str] = Counter()
        self.closed_at: list[tuple[float, str]] = []  # (unix time, close code): the drill's timeline
        self.failed: Counter[str] = Counter()
        self.longest_gap = 0.0
        self.connect_times: list[float] = []
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(count)]

    def start(self, within: float = 15.0) -> None:
        """Returns once every client is connected and has had one message echoed."""
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + within
        while self.connects < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connects < self.count:
            raise DrillError(f"only {self.connects} of {self.count} WebSockets connected within {within:g} s")
        deadline = time.monotonic() + FIRST_ECHO_WITHIN_S
        while len(self.echoed_once) < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.echoed_once) < self.count:
            got = f"it answered {self.first_wrong[:60]!r}" if self.wrong else "no answer"
            raise DrillError(
                f"DRILL_WS={self.path}: {self.count - len(self.echoed_once)} of {self.count} clients had "
                f"no echo of their first message within {FIRST_ECHO_WITHIN_S:g} s ({got}); the drill's "
                "WebSocket clients need an endpoint that echoes text (or DRILL_WS= for none)"
            )

    def hold(self) -> None:
        """Stop reconnecting: a closed client stays closed (the stack is going away)."""
        self.reconnecting.clear()

    def stop(self) -> WsTally:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=WS_CONNECT_TIMEOUT_S + 5)
        with self.lock:
            return WsTally(
                self.count,
                self.connects,
                dict(sorted(self.closes.items())),
                dict(sorted(self.failed.items())),
                round(self.longest_gap, 3),
                self.echoes,
                self.wrong,
                [round(t, 3) for t in sorted(self.connect_times, reverse=True)[:5]],
            )

    def client(self, number: int) -> None:
        closed_at: float | None = None
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                ws = websocket.create_connection(self.url, timeout=WS_CONNECT_TIMEOUT_S)
            except (websocket.WebSocketException, OSError) as error:
                with self.lock:
                    self.failed[failure_reason(error)] += 1
                    self.connect_times.append(time.monotonic() - began)
                self.stopping.wait(WS_RETRY_PAUSE_S)
                continue
            with self.lock:
                self.connects += 1
                self.connect_times.append(time.monotonic() - began)
                if closed_at is not None:
                    self.longest_gap = max(self.longest_gap, time.monotonic() - closed_at)
            code = self.converse(ws, number)
            if code is None:
                return
            closed_at = time.monotonic()
            with self.lock:
                self.closes[str(code)] += 1
                self.closed_at.append((time.time(), str(code)))
            if not self.reconnecting.is_set():
                return

    def converse(self, ws: websocket.WebSocket, number: int) -> int | None:
        """Send and expect each message back, until the server closes (its code) or stop() (None). A
        message unanswered when the server closes is not a wrong echo: the close frame says why."""
        ws.settimeout(WS_POLL_S)
        waiting: deque[str] = deque()
        sent, last_send = 0, -math.inf
        try:
            while not self.stopping.is_set():
                if time.monotonic() - last_send >= SEND_INTERVAL_S:
                    sent += 1
                    waiting.append(f"drill {number}-{sent}")
                    ws.send(waiting[-1])
                    last_send = time.monotonic()
                try:
                    opcode, frame = ws.recv_data_frame(True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return close_code(frame.data)
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.answered(number, frame.data.decode(errors="replace"), waiting)
            ws.close(timeout=1)
            return None
        except (websocket.WebSocketException, OSError):
            return NO_CLOSE_FRAME
        finally:
            cast(RawSocket, ws).shutdown()

    def answered(self, number: int, text: str, waiting: deque[str]) -> None:
        with self.lock:
            if waiting and text == waiting[0]:
                waiting.popleft()
                self.echoes += 1
                self.echoed_once.add(number)
            else:
                self.wrong += 1
                self.first_wrong = self.first_wrong or text


@dataclass
class Tally:
    http: HttpTally
    ws: WsTally
    rooms: dict[str, Any] = field(default_factory=dict)  # Ledger.check(); {} without room members


class Load:
    """wrk, the WebSocket clients and the room members against one stack: started together, stopped
    together (the room members may stop first: `stop_rooms`)."""

    def __init__(self, url: str, ws_url: str, params: LoadParams, out_dir: Path, wrk: str) -> None:
        self.wrk = Wrk(url, params, out_dir, wrk)
        self.sockets = EchoClients(ws_url, params.sockets, params.ws_path)
        per_room = -(-params.room_members // ROOMS)
        self.rooms = Ledger(ws_url, url, ROOMS, per_room, params.room_rate) if per_room else None
        self.rooms_result: dict[str, Any] = {}
        self.tally: Tally | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.sockets.start()
        if self.rooms is not None:
            self.rooms.start()
        self.wrk.start()
        self.started_at = time.monotonic()

    def stop_rooms(self) -> None:
        """Publishers, then members (once they got the last message); their count is kept."""
        if self.rooms is not None and not self.rooms_result:
            self.rooms.stop()
            self.rooms_result = self.rooms.check()

    def stop(self) -> Tally:
        if self.tally is None:
            http = self.wrk.stop()
            self.stop_rooms()
            self.tally = Tally(http, self.sockets.stop(), self.rooms_result)
        return self.tally
