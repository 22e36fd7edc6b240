"""What the wire carries: room names, message ids, frames and close codes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

ROOM_NAME = re.compile(r"^[A-Za-z0-9._~-]+$")  # URL-safe as is: no escaping in paths or keys
ROOM_NAME_RULE = "letters, digits, `.`, `_`, `~`, `-`"
MESSAGE_ID = re.compile(r"^([0-9]{1,19})-([0-9]{1,19})$")  # a Redis stream id, ms-sequence

StreamId = tuple[int, int]


class Close(IntEnum):
    """The close codes a member can get (RFC 6455 and the IANA registry)."""

    UNSUPPORTED = 1003  # a binary message
    INVALID = 1008  # a bad room name, `after` or message; publishing faster than ROOMS_PUBLISH_RATE
    TOO_BIG = 1009  # a message above ROOMS_MAX_MESSAGE_BYTES
    BACKPLANE_DOWN = 1011  # Redis did not answer: reconnect with `after` after a pause
    RESTART = 1012  # the worker restarts (reload, recycle, stop): reconnect with `after` at once
    TRY_AGAIN = 1013  # the send queue was full, or the worker follows ROOMS_MAX_ROOMS rooms


def room_problem(name: str, max_length: int) -> str | None:
    """Why `name` is not a room name, or None."""
    if len(name) > max_length:
        return f"room name longer than ROOMS_MAX_NAME_LENGTH={max_length}"
    if not ROOM_NAME.match(name):
        return f"room name must be 1 or more of {ROOM_NAME_RULE}"
    return None


def parse_id(text: str) -> StreamId | None:
    found = MESSAGE_ID.match(text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def id_text(key: StreamId) -> str:
    return f"{key[0]}-{key[1]}"


def compact(data: Any) -> str:
    """`data` as the JSON a frame carries: compact, non-ASCII kept (its size is what the limit counts)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Frame:
    """One message as every member of a worker gets it: encoded once, compared by id."""

    key: StreamId
    text: str


def frame(message_id: str, room_json: str, data: str, sent_at: str) -> Frame:
    """`data` and `sent_at` as stored (already JSON); `room_json` the room's name as a JSON string."""
    text = f'{{"id":"{message_id}","room":{room_json},"data":{data},"sent_at":{sent_at}}}'
    key = parse_id(message_id) or (0, 0)
    return Frame(key, text)
