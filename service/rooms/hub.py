"""A worker's rooms: which of its members are in which room, and the one reader that follows them all.

The reader runs one XREAD BLOCK over every room with a member on this worker, each from the last id it
handed on (`Room.position`), and offers every message to every member of its room. A member joins at the
room's position (a new room's is the newest id Redis holds), so the reader hands it exactly what comes
after; a join that adds a room interrupts the XREAD in progress (CLIENT UNBLOCK) so that the room is read
at once, not after ROOMS_READ_BLOCK.

When a read fails, the reader asks Redis for a PING: a Redis that answers (a dropped connection, a quick
restart) is read on from the same positions; one that does not is down, and every member is closed with
1011 (they resume with `after` once it is back; joins fail until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from service.rooms.backplane import (
    FIELD_DATA,
    FIELD_SENT_AT,
    Backplane,
    BackplaneUnavailable,
    Entry,
    Reader,
    key_of,
    room_of,
)
from service.rooms.member import Member
from service.rooms.protocol import Close, Frame, StreamId, frame, parse_id
from service.settings import Settings

log = logging.getLogger("service.rooms")

READ_COUNT = 1000  # entries per room and XREAD
FAILED_READS_TO_GIVE_UP = 3  # consecutive failed reads, each followed by a PING that answered
RETRY_PAUSE_S = 0.1
UNBLOCK_EVERY_S = 0.005


class RoomsFull(Exception):
    """This worker already follows ROOMS_MAX_ROOMS rooms."""


class Room:
    __slots__ = ("key", "label", "members", "name", "position")

    def __init__(self, name: str, position: str) -> None:
        self.name = name
        self.key = key_of(name)
        self.label = json.dumps(name)
        self.position = position
        self.members: set[Member] = set()

    def frame(self, message_id: str, fields: dict[str, str]) -> Frame:
        return frame_of(self.label, message_id, fields)


def frame_of(room_label: str, message_id: str, fields: dict[str, str]) -> Frame:
    """A stored message as its frame; `room_label`: the room's name as a JSON string."""
    return frame(message_id, room_label, fields.get(FIELD_DATA, "null"), fields.get(FIELD_SENT_AT, "0"))


class Hub:
    def __init__(self, backplane: Backplane, settings: Settings) -> None:
        self.backplane = backplane
        self.max_rooms = settings.rooms_max_rooms
        self.block_s = settings.rooms_read_block
        self.rooms: dict[str, Room] = {}
        self.reader = Reader(backplane)
        self.changed = asyncio.Event()
        self.reading: frozenset[str] | None = None  # the keys of the XREAD in progress
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.failed_reads = 0

    @property
    def members(self) -> int:
        return sum(len(room.members) for room in self.rooms.values())

    async def join(self, name: str, member: Member) -> StreamId:
        """Adds the member; the id after which the reader hands it every message."""
        room = self.rooms.get(name)
        if room is None:
            if len(self.rooms) >= self.max_rooms:
                raise RoomsFull(f"this worker follows ROOMS_MAX_ROOMS={self.max_rooms} rooms; try later")
            newest = await self.backplane.last_id(name)
            room = self.rooms.get(name)  # another member may have added it meanwhile
            if room is None:
                room = self.rooms[name] = Room(name, newest)
                room.members.add(member)
                await self.follow(room)  # the reader may hand it messages meanwhile: they come after `newest`
                return parse_id(newest) or (0, 0)
        room.members.add(member)
        return parse_id(room.position) or (0, 0)

    def leave(self, name: str, member: Member) -> None:
        room = self.rooms.get(name)
        if room is None:
            return
        room.members.discard(member)
        if not room.members:
            del self.rooms[name]  # the next XREAD leaves it out

    async def follow(self, room: Room) -> None:
        """The reader reads the new room from now on: at once if idle, else its XREAD is interrupted."""
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name="rooms-reader")
        self.changed.set()
        deadline = asyncio.get_running_loop().time() + self.block_s
        while self.reading is not None and room.key not in self.reading and room.name in self.rooms:
            client_id = self.reader.client_id
            try:
                if client_id is not None and await self.backplane.unblock(client_id):
                    return
            except BackplaneUnavailable:
                return  # the reader's own read fails too, and says so
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(UNBLOCK_EVERY_S)

    async def run(self) -> None:
        while not self.stopping:
            if not self.rooms:
                self.changed.clear()
                await self.changed.wait()
                continue
            self.changed.clear()
            streams = {room.key: room.position for room in self.rooms.values()}
            self.reading = frozenset(streams)
            try:
                replies = await self.reader.read(streams, READ_COUNT)
            except BackplaneUnavailable as error:
                await self.read_failed(error)
                continue
            finally:
                self.reading = None
            self.failed_reads = 0
            self.dispatch(replies)

    def dispatch(self, replies: list[tuple[str, list[Entry]]]) -> None:
        for key, entries in replies:
            room = self.rooms.get(room_of(key))
            if room is None:
                continue  # its last member left during the read
            overflowed: list[Member] = []
            for message_id, fields in entries:
                message = room.frame(message_id, fields)
                room.position = message_id
                for member in room.members:
                    if not member.offer(message):
                        overflowed.append(member)
            for member in overflowed:
                self.leave(room.name, member)

    async def read_failed(self, error: BackplaneUnavailable) -> None:
        await self.reader.reset()
        if self.stopping:
            return
        self.failed_reads += 1
        if self.failed_reads < FAILED_READS_TO_GIVE_UP and await self.backplane.ping():
            log.warning("rooms: %s; Redis answers a PING: reading on from the same positions", error)
            await asyncio.sleep(RETRY_PAUSE_S)
            return
        self.backplane_down(str(error))

    def backplane_down(self, reason: str) -> None:
        """Every member closed with 1011; they come back with `after` once Redis answers again."""
        members = [member for room in self.rooms.values() for member in room.members]
        log.error("rooms: backplane unavailable (%s); closing %d member(s) with 1011", reason, len(members))
        for member in members:
            member.close(Close.BACKPLANE_DOWN, f"backplane unavailable: {reason}", flush=True)
        self.rooms.clear()
        self.failed_reads = 0

    async def stop(self) -> None:
        """Ends the reader: its XREAD is interrupted, or ends by itself within ROOMS_READ_BLOCK."""
        self.stopping = True
        self.changed.set()
        task = self.task
        if task is not None and not task.done():
            client_id = self.reader.client_id
            if self.reading is not None and client_id is not None:
                with contextlib.suppress(BackplaneUnavailable):
                    await self.backplane.unblock(client_id)
            try:
                async with asyncio.timeout(self.block_s + self.backplane.timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
        await self.reader.reset()
