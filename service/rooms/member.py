"""One member: a WebSocket in a room, with a bounded queue of frames that its own task sends.

The hub offers each frame synchronously and never waits: a member whose queue holds ROOMS_SEND_QUEUE
frames reads slower than its room talks, and is closed with 1013 (its queue dropped, the frames it was sent
kept). While a member catches up on the room's history, live frames wait aside (`pending`, bounded the same
way) and go to the queue after it, those the history already held left out: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from starlette.websockets import WebSocket, WebSocketDisconnect

from service.rooms.protocol import Close, Frame, StreamId


class Member:
    def __init__(self, websocket: WebSocket, queue_limit: int, publish_rate: float) -> None:
        self.websocket = websocket
        self.limit = queue_limit
        self.queue: deque[str] = deque()
        self.pending: list[Frame] | None = []  # live frames while catching up; None once live
        self.position: StreamId = (0, 0)  # the last id queued or sent: anything at or below is not sent again
        self.wake = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.rate = publish_rate
        self.burst = max(1.0, publish_rate)
        self.tokens = self.burst
        self.refilled = time.monotonic()

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def offer(self, frame: Frame) -> bool:
        """Queue one frame, never waiting; False when that overflowed the queue (the member is closing)."""
        if self.close_code is not None:
            return True
        if self.pending is not None:
            if len(self.pending) >= self.limit:
                return self.overflow()
            self.pending.append(frame)
            return True
        if frame.key <= self.position:
            return True
        if len(self.queue) >= self.limit:
            return self.overflow()
        self.queue.append(frame.text)
        self.position = frame.key
        self.wake.set()
        return True

    def overflow(self) -> bool:
        self.close(
            Close.TRY_AGAIN,
            f"send queue above ROOMS_SEND_QUEUE={self.limit}; reconnect with after=<the last id received>",
        )
        return False

    def go_live(self, position: StreamId) -> None:
        """History sent up to `position`: what arrived meanwhile follows, what the history held left out."""
        pending, self.pending = self.pending or [], None
        self.position = max(self.position, position)
        for frame in pending:
            if not self.offer(frame):
                return

    def close(self, code: int, reason: str, flush: bool = False) -> None:
        """Ask the sender to close the socket with `code`: after the frame it is sending, or with `flush`
        after every frame queued (a backplane going down may come back empty: what is queued is then
        nowhere else)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason[:123]  # a close frame's reason: 123 bytes
            if not flush:
                self.queue.clear()
            self.pending = None
            self.wake.set()

    async def send_now(self, frame: Frame) -> None:
        """A history frame, sent before the member goes live (the sender does not run yet)."""
        await self.websocket.send_text(frame.text)
        self.position = frame.key

    async def run(self) -> None:
        """Sends what is queued, then the close when asked; ends when the socket is gone."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    await self.websocket.send_text(self.queue.popleft())
                if self.close_code is not None:
                    # Waits until the socket can take it: a member that reads nothing gets it once it reads,
                    # after every frame it was sent, or never (nginx's send timeout ends that connection).
                    await self.websocket.close(self.close_code, self.close_reason)
                    return
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the socket went away (or closed) between two frames

    def may_publish(self) -> bool:
        """A token per 1/ROOMS_PUBLISH_RATE seconds, at most a second's worth (and one) saved."""
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
