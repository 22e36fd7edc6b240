"""The demonstration routes. Each one shows one concurrency behaviour; README.md says what to look for."""

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from service import lifecycle, metrics
from service.errors import error_response
from service.settings import Settings


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


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    slow_in_flight = Concurrency()
    Delay = Annotated[float, Query(ge=0, le=settings.app_max_delay, description="seconds")]

    class EchoIn(BaseModel):
        text: str = Field(min_length=1, max_length=settings.app_max_text_length)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> Response:
        if lifecycle.draining.is_set():
            return error_response(request, 503, "draining", "worker is shutting down")
        return JSONResponse({"status": "ready", "pid": os.getpid()})

    @router.get("/api/ping")
    async def ping() -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid()}

    @router.post("/api/echo")
    async def echo(message: EchoIn) -> dict[str, Any]:
        return {"text": message.text, "length": len(message.text), "pid": os.getpid()}

    @router.get("/api/slow")
    async def slow(delay: Delay = 1.0) -> dict[str, Any]:
        concurrent = slow_in_flight.enter()
        try:
            await asyncio.sleep(delay)
        finally:
            slow_in_flight.leave()
        return {"delay": delay, "pid": os.getpid(), "concurrent": concurrent, "peak": slow_in_flight.peak}

    @router.get("/api/blocking")
    async def blocking(delay: Delay = 1.0) -> dict[str, Any]:
        # The anti-pattern on purpose: a synchronous sleep inside `async def` stops this worker's event
        # loop, so every other request on the worker waits, and gunicorn's heartbeat stops too.
        time.sleep(delay)
        return {"delay": delay, "pid": os.getpid(), "anti_pattern": "time.sleep inside async def"}

    async def threadpool() -> anyio.CapacityLimiter:
        return anyio.to_thread.current_default_thread_limiter()

    @router.get("/api/sync")
    def sync(
        limiter: Annotated[anyio.CapacityLimiter, Depends(threadpool)], delay: Delay = 1.0
    ) -> dict[str, Any]:
        time.sleep(delay)
        return {
            "delay": delay,
            "pid": os.getpid(),
            "threadpool_tokens": limiter.total_tokens,
            "threadpool_borrowed": limiter.borrowed_tokens,
        }

    @router.get("/api/cpu")
    def cpu(work: Annotated[int, Query(ge=1, le=settings.app_max_cpu_work)] = 100_000) -> dict[str, Any]:
        started = time.perf_counter()
        total = 0
        for i in range(work):
            total += i * i % 7
        return {
            "work": work,
            "result": total,
            "pid": os.getpid(),
            "cpu_ms": (time.perf_counter() - started) * 1e3,
        }

    @router.get("/api/stream")
    async def stream(
        chunks: Annotated[int, Query(ge=1, le=settings.app_max_stream_chunks)] = 5,
        interval: Delay = 0.5,
    ) -> StreamingResponse:
        async def produce() -> AsyncIterator[bytes]:
            for index in range(chunks):
                if index:
                    await asyncio.sleep(interval)
                yield f'{{"chunk": {index}, "of": {chunks}, "t": {time.time():.3f}}}\n'.encode()

        # X-Accel-Buffering tells nginx to pass each chunk on at once instead of buffering the response.
        return StreamingResponse(
            produce(), media_type="application/x-ndjson", headers={"X-Accel-Buffering": "no"}
        )

    @router.get("/api/info")
    async def info(request: Request) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "client": request.client.host if request.client else None,
            "x_forwarded_for": request.headers.get("x-forwarded-for"),
            "request_id": request.headers.get("x-request-id"),
            "threadpool_tokens": anyio.to_thread.current_default_thread_limiter().total_tokens,
            "settings": settings.model_dump(),
        }

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    @router.websocket("/ws/echo")
    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text") if message.get("text") is not None else message.get("bytes")
                if data is None:
                    continue
                if len(data) > settings.uvicorn_ws_max_size:
                    await websocket.close(code=1009, reason="message too big")
                    return
                if isinstance(data, str):
                    await websocket.send_text(data)
                else:
                    await websocket.send_bytes(data)
        except WebSocketDisconnect:
            return

    @router.websocket("/ws/ticker")
    async def ws_ticker(
        websocket: WebSocket,
        interval: Annotated[float, Query(gt=0, le=settings.app_max_delay)] = 1.0,
    ) -> None:
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

    return router
