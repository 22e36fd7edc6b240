"""Room members and publishers (service/rooms/), and the rows that check the rooms' promise.

A publisher POSTs `{"data": {"p": <its id>, "n": <its sequence in that room>, "t": <its clock>}}`; a
refused message is sent again with the same `n`. A member reads every frame, resumes with `after` = the
last id it got whenever it reconnects (after 1011, 1012, 1013 or a dropped connection) and keeps, per
publisher, the last `n` it saw: a jump is a missing message, an id it already had a duplicate.

Rows (request type WS): `/ws/rooms deliver` — one per message received, its time the publish-to-receive
latency (publisher's clock to member's: meaningful when both run on one host, as `make loadtest` does),
so its rps is deliveries/s and its p50/p99 the latency across workers; `/ws/rooms missing` — one failure
per message a member never got (must stay 0); `/ws/rooms duplicate` — one per message a member got twice.
"""

from __future__ import annotations

import json
import time
import uuid
from itertools import count
from typing import Any

from locust.env import Environment

from loadtest.users.api import ApiUser, describe_failure
from loadtest.users.hooks import report_sample
from loadtest.users.sockets import WebSocketUser

ROOMS = 4  # rooms the users spread over: room-0 ... room-3
ROOM_NAMES = tuple(f"locust-room-{n}" for n in range(ROOMS))
RESUME_CODES = {
    1001: "going away",
    1006: "connection lost",
    1011: "backplane down",
    1012: "service restart",
    1013: "try again later",
}
_members = count()


def message_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


class RoomMember(WebSocketUser):
    """One member of one room (the users take the rooms in turn), held for --ws-hold seconds at a time and
    resumed with `after` between connections: nothing published meanwhile may be missing."""

    abstract = True
    reconnect_codes = RESUME_CODES

    def __init__(self, environment: Environment) -> None:
        self.room = ROOM_NAMES[next(_members) % ROOMS]
        self.path = f"/ws/rooms/{self.room}"
        super().__init__(environment)
        self.last_id: str | None = None
        self.seen: dict[str, int] = {}  # publisher -> the last `n` received

    def connect_url(self) -> str:
        return f"{self.url}?after={self.last_id}" if self.last_id else self.url

    def report(
        self,
        what: str,
        started: float,
        length: int = 0,
        exception: Exception | None = None,
        response_time: float | None = None,
    ) -> None:
        """One row per kind over every room: `/ws/rooms deliver`, not one per room."""
        report_sample(self.environment, "WS", f"/ws/rooms {what}", started, length, exception, response_time)

    def report_row(self, what: str, **sample: Any) -> None:
        self.report(what, time.perf_counter(), **sample)

    def on_message(self, data: str | bytes) -> None:
        arrived = time.time()
        try:
            frame = json.loads(data)
            message_id, body = str(frame["id"]), frame["data"]
            publisher, number, sent = str(body["p"]), int(body["n"]), float(body["t"])
        except (ValueError, KeyError, TypeError) as error:
            self.report_row("deliver", exception=ValueError(f"not a room frame: {error}"))
            return
        if self.last_id is not None and message_key(message_id) <= message_key(self.last_id):
            self.report_row("duplicate", length=len(data))
            return
        self.last_id = message_id
        self.report_row("deliver", length=len(data), response_time=max(0.0, (arrived - sent) * 1000))
        last = self.seen.get(publisher)
        self.seen[publisher] = max(number, last or 0)
        if last is None:
            return
        if number <= last:
            self.report_row("duplicate", length=len(data))
        for missing in range(last + 1, number):
            self.report_row("missing", exception=LookupError(f"{publisher} #{missing} never arrived"))


class RoomPublisher(ApiUser):
    """POSTs to the rooms in turn; a refused message is published again with the same number."""

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.publisher = uuid.uuid4().hex[:8]
        self.numbers = dict.fromkeys(ROOM_NAMES, 0)
        self.turn = count()

    def publish(self) -> None:
        room = ROOM_NAMES[next(self.turn) % ROOMS]
        number = self.numbers[room] + 1
        body = {"data": {"p": self.publisher, "n": number, "t": time.time()}}
        path = f"/api/rooms/{room}/messages"
        with self.client.post(path, json=body, name="/api/rooms/[room]/messages", catch_response=True) as r:
            if r.status_code != 202:
                r.failure(describe_failure(r))
                return
            try:
                accepted = isinstance(r.json().get("id"), str)
            except (ValueError, AttributeError):
                accepted = False
            if accepted:
                self.numbers[room] = number
                r.success()
            else:
                r.failure(f"202 without an id: {str(r.text)[:80]}")
