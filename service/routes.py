"""The demonstration routes, one router per behaviour; README.md says what each one shows.

A router needs nothing from the app but `app.state.settings` (read by the `app_settings` dependency), so any
one of them can be mounted and tested alone.
"""

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from pydantic_core import PydanticKnownError
from pydantic_core.core_schema import ErrorType
from starlette.requests import HTTPConnection

from service import schema
from service.schema import Blocking, Cpu, Echo, Info, Ping, Slow, StreamChunk, Sync
from service.settings import APP_PROCESS_LAYERS, Settings, fields_of

demo = APIRouter()
introspection = APIRouter()
websockets = APIRouter()
ROUTERS = (demo, introspection, websockets)
# Not served with APP_DEMO_ROUTES=0 (nor /docs, service/docs.py): they stall or burn a worker on request,
# or tell a stranger the app's pid, hostname, bind, trusted proxies and timeouts.
DEMO_ONLY = frozenset({"/api/blocking", "/api/cpu", "/api/slow", "/api/sync", "/api/info"})


async def app_settings(connection: HTTPConnection) -> Settings:
    settings: Settings = connection.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(app_settings)]


# --- limits that come from Settings ----------------------------------------------------------------
# They differ per app, so the shared signatures cannot declare them (`Query(le=...)`). The dependencies
# below check them after FastAPI's own validation and raise the error pydantic would have raised, so the
# 422 body is the same; `document_limits` writes each app's numbers into its OpenAPI schema.

LIMIT = "x-limit"


def limited_by(knob: str) -> dict[str, Any]:
    return {LIMIT: knob}


def document_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Replace each `limited_by(knob)` marker with `maximum`/`maxLength` = the knob's value, in place."""

    def fill(node: Any) -> None:
        if isinstance(node, dict):
            if knob := node.pop(LIMIT, None):
                node["maxLength" if node.get("type") == "string" else "maximum"] = getattr(settings, knob)
            node = list(node.values())
        if isinstance(node, list):
            for child in node:
                fill(child)

    fill(schema)
    return schema


def pydantic_error(loc: tuple[str, str], value: Any, error_type: ErrorType, **ctx: Any) -> dict[str, Any]:
    return {
        "type": error_type,
        "loc": loc,
        "msg": PydanticKnownError(error_type, ctx).message(),
        "input": value,
        "ctx": ctx,
    }


def above(connection: HTTPConnection, name: str, value: float, le: float) -> list[dict[str, Any]]:
    # Like a declared `le`: defaults are not checked, and `not value <= le` also refuses nan.
    if name not in connection.query_params or value <= le:
        return []
    return [pydantic_error(("query", name), connection.query_params[name], "less_than_equal", le=le)]


def refuse(connection: HTTPConnection, errors: list[dict[str, Any]]) -> None:
    if errors and connection.scope["type"] == "websocket":
        raise WebSocketRequestValidationError(errors)
    if errors:
        raise RequestValidationError(errors)


Seconds = Annotated[float, Query(ge=0, description="seconds", json_schema_extra=limited_by("app_max_delay"))]


async def delay_param(connection: HTTPConnection, settings: AppSettings, delay: Seconds = 1.0) -> float:
    refuse(connection, above(connection, "delay", delay, settings.app_max_delay))
    return delay


Delay = Annotated[float, Depends(delay_param)]


class EchoIn(BaseModel):
    text: str = Field(min_length=1, json_schema_extra=limited_by("app_max_text_length"))


async def echo_body(connection: HTTPConnection, settings: AppSettings, message: EchoIn) -> EchoIn:
    most = settings.app_max_text_length
    if len(message.text) > most:
        error = pydantic_error(("body", "text"), message.text, "string_too_long", max_length=most)
        refuse(connection, [error])
    return message


async def work_param(
    connection: HTTPConnection,
    settings: AppSettings,
    work: Annotated[int, Query(ge=1, json_schema_extra=limited_by("app_max_cpu_work"))] = 100_000,
) -> int:
    refuse(connection, above(connection, "work", work, settings.app_max_cpu_work))
    return work


async def stream_params(
    connection: HTTPConnection,
    settings: AppSettings,
    chunks: Annotated[int, Query(ge=1, json_schema_extra=limited_by("app_max_stream_chunks"))] = 5,
    interval: Seconds = 0.5,
) -> tuple[int, float]:
    errors = above(connection, "chunks", chunks, settings.app_max_stream_chunks) + above(
        connection, "interval", interval, settings.app_max_delay
    )
    most = settings.app_max_stream_seconds
    if not errors and (chunks - 1) * interval > most:
        # The stream's length: the first chunk at once, then one every `interval`.
        total = (chunks - 1) * interval
        fitting = round(most / (chunks - 1), 3)
        error = pydantic_error(("query", "interval"), interval, "less_than_equal", le=fitting)
        error["msg"] = f"(chunks - 1) x interval = {total:g} s is above APP_MAX_STREAM_SECONDS={most:g}"
        errors.append(error)
    refuse(connection, errors)
    return chunks, interval


async def tick_param(
    connection: HTTPConnection,
    settings: AppSettings,
    interval: Annotated[float, Query(gt=0, json_schema_extra=limited_by("app_max_delay"))] = 1.0,
) -> float:
    refuse(connection, above(connection, "interval", interval, settings.app_max_delay))
    return interval


# --- HTTP demo routes ------------------------------------------------------------------------------


class Concurrency:
    """Per-worker count of requests inside a demo route, to show many in flight on one event loop."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> int:
        self.now += 1
        self.peak = max(self.peak, self.now)
        return self.now

    def leave(self) -> None:
        self.now -= 1


slow_in_flight = Concurrency()


@demo.get("/api/ping")
async def ping() -> Ping:
    return Ping(pong=True, pid=os.getpid())


@demo.post("/api/echo")
async def echo(message: Annotated[EchoIn, Depends(echo_body)]) -> Echo:
    return Echo(text=message.text, length=len(message.text), pid=os.getpid())


@demo.get("/api/slow")
async def slow(delay: Delay) -> Slow:
    concurrent = slow_in_flight.enter()
    try:
        await asyncio.sleep(delay)
    finally:
        slow_in_flight.leave()
    return Slow(delay=delay, pid=os.getpid(), concurrent=concurrent, peak=slow_in_flight.peak)


@demo.get("/api/blocking")
async def blocking(delay: Delay) -> Blocking:
    # The anti-pattern on purpose: a synchronous sleep inside `async def` stops this worker's event
    # loop, so every other request on the worker waits, and gunicorn's heartbeat stops too.
    time.sleep(delay)
    return Blocking(delay=delay, pid=os.getpid(), anti_pattern="time.sleep inside async def")


async def threadpool() -> anyio.CapacityLimiter:
    return anyio.to_thread.current_default_thread_limiter()


@demo.get("/api/sync")
def sync(limiter: Annotated[anyio.CapacityLimiter, Depends(threadpool)], delay: Delay) -> Sync:
    time.sleep(delay)
    return Sync(
        delay=delay,
        pid=os.getpid(),
        threadpool_tokens=int(limiter.total_tokens),
        threadpool_borrowed=limiter.borrowed_tokens,
    )


@demo.get("/api/cpu")
def cpu(work: Annotated[int, Depends(work_param)]) -> Cpu:
    started = time.perf_counter()
    total = 0
    for i in range(work):
        total += i * i % 7
    return Cpu(work=work, result=total, pid=os.getpid(), cpu_ms=(time.perf_counter() - started) * 1e3)


@demo.get(
    "/api/stream",
    response_class=StreamingResponse,
    responses={200: schema.ndjson(StreamChunk, "One JSON object per line, each sent as it is made.")},
)
async def stream(params: Annotated[tuple[int, float], Depends(stream_params)]) -> StreamingResponse:
    chunks, interval = params

    async def produce() -> AsyncIterator[bytes]:
        for index in range(chunks):
            if index:
                await asyncio.sleep(interval)
            line = StreamChunk(chunk=index, of=chunks, t=round(time.time(), 3))
            yield line.model_dump_json().encode() + b"\n"

    # X-Accel-Buffering tells nginx to pass each chunk on at once instead of buffering the response.
    return StreamingResponse(produce(), media_type=schema.NDJSON, headers={"X-Accel-Buffering": "no"})


# --- what the app sees -----------------------------------------------------------------------------


@introspection.get("/api/info")
async def info(request: Request, settings: AppSettings) -> Info:
    return Info(
        pid=os.getpid(),
        hostname=socket.gethostname(),
        client=request.client.host if request.client else None,
        x_forwarded_for=request.headers.get("x-forwarded-for"),
        request_id=request.headers.get("x-request-id"),
        threadpool_tokens=int(anyio.to_thread.current_default_thread_limiter().total_tokens),
        # Only the knobs this process receives: the others (nginx, compose, ...) would be its defaults.
        settings=settings.model_dump(include=set(fields_of(*APP_PROCESS_LAYERS))),
        settings_layers=list(APP_PROCESS_LAYERS),
    )


# --- WebSockets ------------------------------------------------------------------------------------


def message_size(data: str | bytes, limit: int) -> int:
    """A message's size in bytes as sent (UTF-8 for text), counted exactly only near `limit`: uvicorn lets
    a message a little above UVICORN_WS_MAX_SIZE through (service/worker.py, ws_frame_limit)."""
    if isinstance(data, bytes) or len(data) * 4 <= limit:
        return len(data)
    return len(data.encode())


async def ws_echo(websocket: WebSocket) -> None:
    settings: Settings = websocket.app.state.settings
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes")
            if data is None:
                continue
            if message_size(data, limit := settings.uvicorn_ws_max_size) > limit:
                await websocket.close(code=1009, reason="message too big")
                return
            if isinstance(data, str):
                await websocket.send_text(data)
            else:
                await websocket.send_bytes(data)
    except WebSocketDisconnect:
        return


# A plain Starlette route: it takes no parameters, and FastAPI's dependency layer (two exit stacks, the
# solved dependencies) would stay allocated as long as the socket is open, 3.6 of 33 KiB per idle socket
# (docs/PERFORMANCE.md).
websockets.add_websocket_route("/ws/echo", ws_echo, name="ws_echo")


@websockets.websocket("/ws/ticker")
async def ws_ticker(websocket: WebSocket, interval: Annotated[float, Depends(tick_param)]) -> None:
    await websocket.accept()

    async def push() -> None:
        tick = 0
        try:
            while True:
                await websocket.send_json({"tick": tick, "pid": os.getpid(), "t": time.time()})
                tick += 1
                await asyncio.sleep(interval)
        except (WebSocketDisconnect, OSError):
            return  # the client left between two pushes; the receive loop below sees it too

    async with anyio.create_task_group() as pushing:
        pushing.start_soon(push)
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        pushing.cancel_scope.cancel()
