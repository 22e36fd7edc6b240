"""The Redis side of the rooms: one stream per room (`room:<name>`), bounded by ROOMS_HISTORY messages and
ROOMS_HISTORY_SECONDS, and every call bounded by REDIS_TIMEOUT. Any failure is a BackplaneUnavailable
whose message is one line.

A publish is one round trip: XADD with MAXLEN ~ (XADD takes one trimming rule), XTRIM MINID ~ and EXPIRE
(a silent room goes away whole) in one pipeline. MINID is computed from this host's clock: a clock ahead of
Redis's by d keeps d less history.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from service.settings import Settings

KEY_PREFIX = "room:"
FIELD_DATA = "d"
FIELD_SENT_AT = "t"
NOTHING_YET = "0-0"  # XREAD after it returns every entry: what a room without messages starts from
T = TypeVar("T")
Entry = tuple[str, dict[str, str]]  # (id, fields) as XRANGE and XREAD return them, decoded


class BackplaneUnavailable(Exception):
    """Redis did not connect or answer within REDIS_TIMEOUT, or refused the command."""


def key_of(room: str) -> str:
    return KEY_PREFIX + room


def room_of(key: str) -> str:
    return key[len(KEY_PREFIX) :]


def entries_of(raw: Any) -> list[Entry]:
    """XRANGE's or one stream of XREAD's reply, decoded; an entry without fields (deleted) has none."""
    return [
        (str(message_id), {str(k): str(v) for k, v in (fields or {}).items()})
        for message_id, fields in raw or []
    ]


def streams_of(raw: Any) -> list[tuple[str, list[Entry]]]:
    """XREAD's reply, RESP2 (a list of [key, entries]) or RESP3 (a map of key to entries)."""
    pairs = raw.items() if isinstance(raw, dict) else raw or []
    return [(str(key), entries_of(entries)) for key, entries in pairs]


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def client(settings: Settings, read_timeout: float, single: bool = False) -> Redis:
    """One retry on a new connection for a pooled one that died (a restarted Redis), no backoff: the caller's
    REDIS_TIMEOUT bounds the whole call."""
    return Redis.from_url(
        settings.redis_address,
        socket_timeout=read_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0 if single else 1),
        decode_responses=True,
        single_connection_client=single,
        client_name=f"rooms-{os.getpid()}",
    )


class Backplane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.redis_timeout
        self.redis = client(settings, settings.redis_timeout)

    @asynccontextmanager
    async def bounded(self, what: str, seconds: float | None = None) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout if seconds is None else seconds):
                yield
        except TimeoutError:
            raise BackplaneUnavailable(
                f"{what}: Redis did not answer within REDIS_TIMEOUT={self.timeout:g}s"
            ) from None
        except (RedisError, OSError) as error:
            raise BackplaneUnavailable(f"{what}: {describe(error)}") from error

    async def call(self, what: str, awaitable: Awaitable[T]) -> T:
        async with self.bounded(what):
            return await awaitable

    async def publish(self, room: str, data: str) -> str:
        """Append one message (its `data` already compact JSON); its id."""
        settings = self.settings
        now = time.time()
        oldest_ms = int(now * 1000) - settings.rooms_history_seconds * 1000
        key = key_of(room)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            key,
            {FIELD_DATA: data, FIELD_SENT_AT: f"{now:.6f}"},
            maxlen=settings.rooms_history,
            approximate=True,
        )
        pipe.xtrim(key, minid=str(max(oldest_ms, 0)), approximate=True)
        pipe.expire(key, settings.rooms_history_seconds)
        replies = await self.call("publish", pipe.execute())
        return str(replies[0])

    async def last_id(self, room: str) -> str:
        """The newest id the room holds (NOTHING_YET for none): where a member without `after` starts."""
        newest = await self.call("join", self.redis.xrevrange(key_of(room), count=1))
        return str(newest[0][0]) if newest else NOTHING_YET

    async def history(self, room: str, after: str, count: int) -> list[Entry]:
        """Up to `count` messages with ids above `after`, oldest first."""
        entries = await self.call("history", self.redis.xrange(key_of(room), min=f"({after}", count=count))
        return entries_of(entries)

    async def unblock(self, client_id: int) -> bool:
        """Ends the XREAD BLOCK of that connection at once (as if it timed out); False: it was not blocked."""
        return bool(await self.call("unblock", self.redis.client_unblock(client_id)))

    async def ping(self) -> bool:
        try:
            return bool(await self.call("ping", self.redis.ping()))
        except BackplaneUnavailable:
            return False

    async def close(self) -> None:
        await self.redis.aclose()


class Reader:
    """The connection one worker's XREAD BLOCK runs on; its client id lets a join interrupt it."""

    def __init__(self, backplane: Backplane) -> None:
        settings = backplane.settings
        self.backplane = backplane
        self.block_ms = max(1, round(settings.rooms_read_block * 1000))
        self.redis: Redis | None = None
        self.client_id: int | None = None

    async def connect(self) -> None:
        if self.redis is None:
            settings = self.backplane.settings
            self.redis = client(settings, settings.rooms_read_block + settings.redis_timeout, single=True)
        if self.client_id is None:
            self.client_id = int(await self.backplane.call("reader", self.redis.client_id()))

    async def read(self, streams: dict[str, str], count: int) -> list[tuple[str, list[Entry]]]:
        """New entries of the streams after the given ids; [] when none came within ROOMS_READ_BLOCK."""
        await self.connect()
        assert self.redis is not None
        seconds = self.block_ms / 1000 + self.backplane.timeout
        named: Any = streams
        async with self.backplane.bounded("read", seconds):
            replies = await self.redis.xread(named, count=count, block=self.block_ms)
        return streams_of(replies)

    async def reset(self) -> None:
        """After a failure: the next read connects anew (and learns its new client id)."""
        redis, self.redis, self.client_id = self.redis, None, None
        if redis is not None:
            with suppress(RedisError, OSError):
                await redis.aclose()
