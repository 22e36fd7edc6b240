"""Room members and a publisher that check what the rooms promise (service/rooms/): every message the
server accepted (202) reaches every member once, in order, across reconnects. The drills hold them during
every event; the stack tests use them too.

Members are websocket-client threads. Each records the ids it got and, from the message's own `t` (the
publisher's clock: same host), the publish-to-receive latency. When the server closes it with 1011, 1012
or 1013, or the connection drops (1006), it reconnects with `after` = the last id it got, at once (after 1011
and after a failed handshake: RETRY_PAUSE_S later). The publisher POSTs `{"data": {"p", "n", "t"}}` at a
steady rate and keeps the id of every accepted message.

`Ledger.check` compares: missing = accepted ids a member never got (after it first joined), duplicates =
ids it got twice; a member `away()` during an event gets, when back, what the room still keeps.
"""

from __future__ import annotations

import itertools
import json
import statistics
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httpx2
import websocket

RESUME_CODES = {1001, 1006, 1011, 1012, 1013}
FATAL_CODES = {1003, 1008, 1009}  # the client sent something wrong: reconnecting would not help
RETRY_PAUSE_S = 0.2
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.25
NO_CLOSE_FRAME = 1006


class RawSocket(Protocol):
    def shutdown(self) -> None: ...


def message_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1], 2)


class Member(threading.Thread):
    """One member of `room`, connected until stop(); away() / back() drop and resume it on purpose."""

    def __init__(self, ws_url: str, room: str, stopping: threading.Event, name: str = "") -> None:
        super().__init__(daemon=True, name=name or f"member-{room}")
        self.room = room
        self.url = f"{ws_url}/ws/rooms/{room}"
        self.stopping = stopping
        self.present = threading.Event()
        self.present.set()
        self.connected = threading.Event()
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.latencies_ms: list[float] = []
        self.closes: Counter[int] = Counter()
        self.failed: Counter[str] = Counter()
        self.connects = 0
        self.fatal: str = ""
        self.socket: websocket.WebSocket | None = None

    @property
    def last_id(self) -> str | None:
        with self.lock:
            return self.ids[-1] if self.ids else None

    def away(self) -> None:
        """Leave (close the socket) and stay away until back()."""
        self.present.clear()
        ws = self.socket
        if ws is not None:
            cast(RawSocket, ws).shutdown()

    def back(self) -> None:
        self.present.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.present.wait(POLL_S):
                continue
            after = self.last_id
            url = f"{self.url}?after={after}" if after else self.url
            try:
                ws = websocket.create_connection(url, timeout=CONNECT_TIMEOUT_S, skip_utf8_validation=True)
            except (websocket.WebSocketException, OSError) as error:
                with self.lock:
                    self.failed[describe(error)] += 1
                self.stopping.wait(RETRY_PAUSE_S)
                continue
            with self.lock:
                self.connects += 1
            self.socket = ws
            self.connected.set()
            code, reason = self.receive(ws)
            self.socket = None
            if code is None:
                return
            with self.lock:
                self.closes[code] += 1
            if code in FATAL_CODES:
                self.fatal = f"{code} {reason}"
                return
            if code == 1011:
                self.stopping.wait(RETRY_PAUSE_S)

    def receive(self, ws: websocket.WebSocket) -> tuple[int | None, str]:
        ws.settimeout(POLL_S)
        try:
            while not self.stopping.is_set() and self.present.is_set():
                try:
                    opcode, frame = ws.recv_data_frame(True)
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    data = frame.data
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    return int(code), data[2:].decode(errors="replace")
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.record(frame.data, time.time())
            if not self.present.is_set():
                return NO_CLOSE_FRAME, "away"
            ws.close(timeout=1)
            return None, ""
        except (websocket.WebSocketException, OSError) as error:
            return (None, "") if self.stopping.is_set() else (NO_CLOSE_FRAME, describe(error))
        finally:
            cast(RawSocket, ws).shutdown()

    def record(self, raw: bytes, arrived: float) -> None:
        message = json.loads(raw)
        data = message.get("data")
        with self.lock:
            self.ids.append(message["id"])
            if isinstance(data, dict) and isinstance(data.get("t"), int | float):
                self.latencies_ms.append(max(0.0, (arrived - data["t"]) * 1000))


def describe(error: BaseException) -> str:
    if isinstance(error, websocket.WebSocketBadStatusException):
        return f"handshake {error.status_code}"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, TimeoutError | websocket.WebSocketTimeoutException):
        return "timeout"
    return type(error).__name__


class Publisher(threading.Thread):
    """POSTs to `room` at `rate` messages/s until stop; keeps every accepted id, counts the refusals."""

    def __init__(self, url: str, room: str, rate: float, stopping: threading.Event, name: str = "p") -> None:
        super().__init__(daemon=True, name=f"publisher-{room}")
        self.url = f"{url}/api/rooms/{room}/messages"
        self.rate = rate
        self.stopping = stopping
        self.name_ = name
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()

    def run(self) -> None:
        period = 1.0 / self.rate
        sequence = 0
        next_at = time.monotonic()
        with httpx2.Client(timeout=10) as client:
            while not self.stopping.is_set():
                sequence += 1
                body = {"data": {"p": self.name_, "n": sequence, "t": time.time()}}
                try:
                    answer = client.post(self.url, json=body)
                    outcome = str(answer.status_code)
                    if answer.status_code == 202:
                        with self.lock:
                            self.accepted.append(answer.json()["id"])
                    else:
                        error = (
                            answer.json().get("error", "")
                            if "json" in answer.headers.get("content-type", "")
                            else ""
                        )
                        outcome = f"{outcome} {error}".strip()
                except httpx2.HTTPError as failure:
                    outcome = type(failure).__name__
                if outcome != "202":
                    with self.lock:
                        self.refused[outcome] += 1
                next_at += period
                self.stopping.wait(max(0.0, next_at - time.monotonic()))


@dataclass
class Ledger:
    """Members of rooms and their publishers; `check` once they are stopped."""

    ws_url: str
    url: str
    rooms: int
    members_per_room: int
    rate: float  # messages/s per room
    stopping: threading.Event = field(default_factory=threading.Event)  # members
    publishing_done: threading.Event = field(default_factory=threading.Event)  # publishers
    members: dict[str, list[Member]] = field(default_factory=dict)
    publishers: dict[str, Publisher] = field(default_factory=dict)

    def start(self, within: float = 20.0) -> None:
        """Every member connected, then the publishers start: every accepted message is every member's."""
        stamp = f"{time.time_ns():x}"[-8:]
        for index in range(self.rooms):
            room = f"drill-{stamp}-{index}"
            self.members[room] = [
                Member(self.ws_url, room, self.stopping, f"m{index}.{n}")
                for n in range(self.members_per_room)
            ]
            self.publishers[room] = Publisher(self.url, room, self.rate, self.publishing_done, f"p{index}")
        everyone = [member for members in self.members.values() for member in members]
        for member in everyone:
            member.start()
        deadline = time.monotonic() + within
        for member in everyone:
            if not member.connected.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"room members: {member.name} did not connect within {within:g} s")
        for publisher in self.publishers.values():
            publisher.start()

    def every_member(self) -> list[Member]:
        return [member for members in self.members.values() for member in members]

    def stop(self, settle: float = 5.0) -> None:
        """Publishers first; members get until `settle` to receive the last accepted message."""
        self.publishing_done.set()
        for publisher in self.publishers.values():
            publisher.join(timeout=15)
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and not self.caught_up():
            time.sleep(0.1)
        self.stopping.set()
        for member in self.every_member():
            member.join(timeout=CONNECT_TIMEOUT_S + 2)

    def caught_up(self) -> bool:
        for room, members in self.members.items():
            accepted = self.publishers[room].accepted
            if not accepted:
                continue
            last = message_key(accepted[-1])
            if any(
                m.present.is_set() and (m.last_id is None or message_key(m.last_id) < last) for m in members
            ):
                return False
        return True

    def check(self) -> dict[str, Any]:
        """What the members got against what was accepted, over every room."""
        published = missing = duplicates = delivered = out_of_order = unacknowledged = 0
        latencies: list[float] = []
        closes: Counter[int] = Counter()
        failed: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        connects = 0
        fatal = []
        missed: dict[str, int] = {}
        for room, members in self.members.items():
            publisher = self.publishers[room]
            accepted = set(publisher.accepted)
            published += len(accepted)
            refused.update(publisher.refused)
            for member in members:
                got = member.ids
                distinct = set(got)
                delivered += len(got)
                missing += len(accepted - distinct)
                if accepted - distinct:
                    missed[member.name] = len(accepted - distinct)
                duplicates += len(got) - len(distinct)
                unacknowledged += len(distinct - accepted)
                keys = [message_key(i) for i in got]
                out_of_order += sum(1 for a, b in itertools.pairwise(keys) if b < a)
                latencies += member.latencies_ms
                closes.update(member.closes)
                failed.update(member.failed)
                connects += member.connects
                if member.fatal:
                    fatal.append(f"{member.name}: {member.fatal}")
        return {
            "rooms": self.rooms,
            "members": self.rooms * self.members_per_room,
            "published": published,
            "refused": dict(sorted(refused.items())),
            "delivered": delivered,
            "missing": missing,
            "missing_by_member": missed,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "unacknowledged": unacknowledged,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99),
            "connects": connects,
            "closes": {str(code): n for code, n in sorted(closes.items())},
            "failed_connects": dict(sorted(failed.items())),
            "fatal": fatal,
        }
