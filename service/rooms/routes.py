"""The rooms' two routes: `WS /ws/rooms/{room}` (members) and `POST /api/rooms/{room}/messages`, and
`Rooms`, what one worker holds for them (the backplane and the hub), made and closed by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from service.errors import error_response
from service.rooms.backplane import Backplane, BackplaneUnavailable
from service.rooms.hub import Hub, RoomsFull, frame_of
from service.rooms.member import Member
from service.rooms.protocol import ROOM_NAME, Close, compact, parse_id, room_problem
from service.routes import AppSettings, limited_by, pydantic_error, refuse
from service.schema import Published
from service.settings import Settings

log = logging.getLogger("service.rooms")

HISTORY_BATCH = 200  # messages per XRANGE while a member catches up

router = APIRouter()


class Rooms:
    """One worker's: the Redis client and the hub of its members."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backplane = Backplane(settings)
        self.hub = Hub(self.backplane, settings)

    async def close(self) -> None:
        await self.hub.stop()
        await self.backplane.close()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Made in each worker (the Redis client belongs to its event loop); Redis is first asked on first use,
    so a worker starts, and HTTP serves, while Redis is down."""
    rooms = Rooms(app.state.settings)
    app.state.rooms = rooms
    try:
        yield
    finally:
        await rooms.close()


async def app_rooms(connection: HTTPConnection) -> Rooms:
    rooms: Rooms = connection.app.state.rooms
    return rooms


# --- POST /api/rooms/{room}/messages ----------------------------------------------------------------

RoomName = Annotated[
    str,
    Path(
        pattern=ROOM_NAME.pattern,
        description="Letters, digits, `.`, `_`, `~`, `-`.",
        json_schema_extra=limited_by("rooms_max_name_length"),
    ),
]


async def room_param(connection: HTTPConnection, settings: AppSettings, room: RoomName) -> str:
    most = settings.rooms_max_name_length
    if len(room) > most:
        refuse(connection, [pydantic_error(("path", "room"), room, "string_too_long", max_length=most)])
    return room


class RoomMessageIn(BaseModel):
    data: Any = Field(
        description="Any JSON value, null included; at most ROOMS_MAX_MESSAGE_BYTES as compact JSON.",
        json_schema_extra=limited_by("rooms_max_message_bytes"),
    )


@router.post(
    "/api/rooms/{room}/messages",
    status_code=202,
    response_model=Published,
    summary="Publish a message to a room",
    description="Every member of the room, on any worker or replica, gets it as a frame of "
    "`/ws/rooms/{room}` (see the API's description); members that join later with `after` get it while "
    "the room keeps it (ROOMS_HISTORY, ROOMS_HISTORY_SECONDS).",
)
async def publish(
    request: Request,
    room: Annotated[str, Depends(room_param)],
    message: RoomMessageIn,
    settings: AppSettings,
    rooms: Annotated[Rooms, Depends(app_rooms)],
) -> Published | JSONResponse:
    try:
        data = compact(message.data)
    except ValueError:
        error = pydantic_error(("body", "data"), str(message.data), "json_invalid", error="NaN or Infinity")
        refuse(request, [error])
        raise
    most = settings.rooms_max_message_bytes
    size = len(data.encode())
    if size > most:
        detail = f"`data` is {size} bytes as compact JSON; ROOMS_MAX_MESSAGE_BYTES={most}"
        return error_response(request, 413, "message_too_large", detail)
    try:
        message_id = await rooms.backplane.publish(room, data)
    except BackplaneUnavailable as error:
        return error_response(request, 503, "backplane_unavailable", str(error))
    return Published(id=message_id)


# --- WS /ws/rooms/{room}?after=<id> -----------------------------------------------------------------


async def room_socket(websocket: WebSocket) -> None:
    """A plain Starlette route (as /ws/echo): FastAPI's dependency layer would stay allocated per socket."""
    rooms: Rooms = websocket.app.state.rooms
    settings = rooms.settings
    name = websocket.path_params["room"]
    after = websocket.query_params.get("after") or None
    await websocket.accept()
    problem = room_problem(name, settings.rooms_max_name_length)
    start = parse_id(after) if after else None
    if problem is None and after and start is None:
        problem = "after must be an id a frame of this room carried (ms-sequence)"
    if problem:
        await websocket.close(Close.INVALID, problem)
        return
    member = Member(websocket, settings.rooms_send_queue, settings.rooms_publish_rate)
    try:
        joined = await rooms.hub.join(name, member)
    except BackplaneUnavailable as error:
        await websocket.close(Close.BACKPLANE_DOWN, f"backplane unavailable: {error}"[:123])
        return
    except RoomsFull as error:
        await websocket.close(Close.TRY_AGAIN, str(error)[:123])
        return
    try:
        if after is not None and start is not None:
            member.position = start
            await catch_up(rooms, name, member, after)
            member.go_live(member.position)
        else:
            member.go_live(joined)
        await serve(rooms, name, member)
    except BackplaneUnavailable as error:
        member.close(Close.BACKPLANE_DOWN, f"backplane unavailable: {error}")
        await member.run()
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        rooms.hub.leave(name, member)


router.add_websocket_route("/ws/rooms/{room}", room_socket, name="ws_rooms")


async def catch_up(rooms: Rooms, name: str, member: Member, after: str) -> None:
    """Sends the room's messages after `after` until the live ones (kept aside meanwhile) take over."""
    cursor = after
    room_label = json.dumps(name)
    while not member.closing:
        entries = await rooms.backplane.history(name, cursor, HISTORY_BATCH)
        for message_id, fields in entries:
            await member.send_now(frame_of(room_label, message_id, fields))
        if len(entries) < HISTORY_BATCH:
            return
        cursor = entries[-1][0]
        if member.pending and member.position >= member.pending[0].key:
            return  # what follows was read live


async def serve(rooms: Rooms, name: str, member: Member) -> None:
    """The member's sender runs beside its receive loop, which publishes what it sends."""
    sender = asyncio.create_task(member.run(), name="rooms-member")
    member.wake.set()
    try:
        while True:
            message = await member.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if not member.closing:
                await publish_from(rooms, name, member, message)
    finally:
        sender.cancel()


async def publish_from(rooms: Rooms, name: str, member: Member, message: Message) -> None:
    settings = rooms.settings
    text = message.get("text")
    if text is None:
        member.close(Close.UNSUPPORTED, 'binary messages are not room messages: send {"data": ...} as text')
        return
    try:
        body = json.loads(text)
        data = compact(body["data"]) if isinstance(body, dict) else None
    except (ValueError, KeyError):
        data = None
    if data is None:
        member.close(Close.INVALID, 'expected {"data": <any JSON>}')
        return
    most = settings.rooms_max_message_bytes
    if len(data.encode()) > most:
        member.close(Close.TOO_BIG, f"data above ROOMS_MAX_MESSAGE_BYTES={most}")
        return
    if not member.may_publish():
        rate = settings.rooms_publish_rate
        member.close(Close.INVALID, f"publishing faster than ROOMS_PUBLISH_RATE={rate:g}/s")
        return
    try:
        await rooms.backplane.publish(name, data)
    except BackplaneUnavailable as error:
        member.close(Close.BACKPLANE_DOWN, f"backplane unavailable: {error}")
