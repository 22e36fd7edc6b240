"""The worker's drain, in-process: a real uvicorn server on a loopback socket, raw keep-alive connections and
WebSocket clients standing in for nginx. What nginx does with it is tested in tests/stack/test_drain.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets
from uvicorn.config import Config

from service.platform import lifecycle, metrics
from service.platform.worker import CloseWhenDraining, DrainingServer, RecycleTurns


async def tiny_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] == "websocket.receive":
            pass
        return
    body = b"ok"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(autouse=True)
def not_draining() -> Iterator[None]:
    for flag in (lifecycle.draining, lifecycle.closing):
        flag.clear()
    yield
    for flag in (lifecycle.draining, lifecycle.closing):
        flag.clear()


@asynccontextmanager
async def serving(
    graceful: float,
    ws_close_spread: float = 0.0,
    max_requests: int | None = None,
    turns: RecycleTurns | None = None,
) -> AsyncIterator[tuple[DrainingServer, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = Config(
        app=CloseWhenDraining(tiny_app),
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=graceful,  # type: ignore[arg-type]
        timeout_keep_alive=60,
        ws="websockets-sansio",
        limit_max_requests=max_requests,
    )
    server = DrainingServer(config, ws_close_spread=ws_close_spread, turns=turns)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield server, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, graceful + 5)


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await reader.readexactly(2)
    return head.lower()


def test_an_idle_keepalive_connection_outlives_the_exit_and_its_next_request_closes_it() -> None:
    async def scenario() -> None:
        async with serving(graceful=5) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert b"connection: close" not in await request(reader, writer)

            server.should_exit = True  # what TERM, HUP and max_requests all come down to
            await asyncio.sleep(0.5)
            assert lifecycle.draining.is_set()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)  # not accepting any more

            # nginx may send its next request on the pooled connection now: it must be answered
            assert b"connection: close" in await request(reader, writer)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and the worker closes it after
            writer.close()

    asyncio.run(scenario())


def test_the_worker_exits_as_soon_as_its_last_connection_is_gone() -> None:
    async def scenario() -> None:
        async with serving(graceful=10) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await request(reader, writer)
            server.should_exit = True
            await asyncio.sleep(0.3)
            assert server.server_state.connections  # held open, nobody closed it
            started = time.monotonic()
            writer.close()  # nginx's keepalive_timeout ran out: nginx closes its idle connection
            while server.server_state.connections:
                await asyncio.sleep(0.02)
            assert time.monotonic() - started < 0.5

    asyncio.run(scenario())


def test_a_recycling_worker_serves_on_until_its_pooled_connections_are_gone() -> None:
    async def scenario() -> None:
        async with serving(graceful=10, max_requests=1) as (_, port):
            pooled = await asyncio.open_connection("127.0.0.1", port)
            await request(*pooled)  # the request limit is reached: no signal, gunicorn sees nothing yet
            await asyncio.sleep(0.5)
            assert lifecycle.closing.is_set() and not lifecycle.draining.is_set()

            fresh = await asyncio.open_connection("127.0.0.1", port)  # still accepting: nobody else would
            assert b"connection: close" in await request(*fresh)
            assert b"connection: close" in await request(*pooled)
            await asyncio.sleep(0.3)
            assert lifecycle.draining.is_set()  # its pooled connections are gone: now it stops accepting
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            for _, writer in (pooled, fresh):
                writer.close()

    asyncio.run(scenario())


def test_a_recycling_worker_waits_until_another_worker_accepts(tmp_path: Path) -> None:
    turns = RecycleTurns(tmp_path / "workers", pid=os.getpid(), workers=2)
    sibling = subprocess.Popen(["sleep", "30"])  # a live pid standing in for the other worker
    gone = subprocess.Popen(["true"])
    gone.wait()

    async def scenario() -> None:
        async with serving(graceful=10, max_requests=1, turns=turns) as (_, port):
            assert (turns.directory / str(os.getpid())).exists()  # it accepts, and says so
            (turns.directory / str(gone.pid)).touch()  # a worker that died without saying so
            pooled = await asyncio.open_connection("127.0.0.1", port)
            await request(*pooled)  # the request limit is reached
            await asyncio.sleep(0.5)
            # nobody else accepts: it serves on as before, no Connection: close, and still accepts
            assert not lifecycle.closing.is_set()
            assert b"connection: close" not in await request(*pooled)
            fresh = await asyncio.open_connection("127.0.0.1", port)
            assert b"connection: close" not in await request(*fresh)

            (turns.directory / str(sibling.pid)).touch()  # the other worker (re)starts accepting
            await asyncio.sleep(0.3)
            assert lifecycle.closing.is_set()  # its turn: the recycle goes on as before
            assert not (turns.directory / str(os.getpid())).exists()
            assert b"connection: close" in await request(*pooled)
            for _, writer in (pooled, fresh):
                writer.close()

    try:
        asyncio.run(scenario())
    finally:
        sibling.kill()
        sibling.wait()


def test_two_workers_never_leave_together(tmp_path: Path) -> None:
    first = RecycleTurns(tmp_path, pid=os.getpid(), workers=2)
    sibling = subprocess.Popen(["sleep", "30"])
    try:
        second = RecycleTurns(tmp_path, pid=sibling.pid, workers=2)
        first.accepting()
        second.accepting()
        assert first.my_turn()  # the other accepts
        assert not second.my_turn()  # the first has left: the second waits for its replacement
        assert RecycleTurns(tmp_path, pid=sibling.pid, workers=1).my_turn()  # alone: gunicorn's way
    finally:
        sibling.kill()
        sibling.wait()


def test_the_deadline_closes_what_is_left_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(graceful=1) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await request(reader, writer)
            server.should_exit = True
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.9 < time.monotonic() - started < 2
            writer.close()

    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        asyncio.run(scenario())
    assert "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=1" in caplog.text


def test_websockets_are_closed_with_1012_one_by_one_over_the_spread() -> None:
    async def scenario() -> list[tuple[float, int | None]]:
        closes: list[tuple[float, int | None]] = []

        async def hold(port: int) -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
                try:
                    await ws.recv()
                except websockets.ConnectionClosed as closed:
                    closes.append((time.monotonic(), closed.rcvd.code if closed.rcvd else None))

        async with serving(graceful=10, ws_close_spread=1.5) as (server, port):
            holders = [asyncio.create_task(hold(port)) for _ in range(4)]
            while sum(1 for _ in server.server_state.connections) < 4:
                await asyncio.sleep(0.01)
            server.should_exit = True
            await asyncio.wait_for(asyncio.gather(*holders), 5)
        return closes

    closes = asyncio.run(scenario())
    assert [code for _, code in closes] == [1012] * 4
    times = sorted(at for at, _ in closes)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(0.25 < gap < 0.6 for gap in gaps), gaps  # 1.5 s / 4 sockets = one every 0.375 s


def test_responses_get_connection_close_only_while_draining() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    app = CloseWhenDraining(tiny_app)
    asyncio.run(app({"type": "http"}, receive, send))
    lifecycle.closing.set()
    asyncio.run(app({"type": "http"}, receive, send))
    first, second = (m["headers"] for m in sent if m["type"] == "http.response.start")
    assert (b"connection", b"close") not in first
    assert (b"connection", b"close") in second


def test_each_connection_is_counted_once_however_many_requests_it_carries() -> None:
    def opened() -> float:
        return float(metrics.CONNECTIONS_OPENED._value.get())

    async def scenario() -> float:
        async with serving(graceful=5) as (server, port):
            before = opened()
            pooled = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                await request(*pooled)  # what nginx does with a pooled upstream connection
            fresh = await asyncio.open_connection("127.0.0.1", port)
            await request(*fresh)
            async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
                await ws.send("hi")  # upgraded from an HTTP connection: still one connection
            for _, writer in (pooled, fresh):
                writer.close()
            while server.server_state.connections:
                await asyncio.sleep(0.02)
            return opened() - before

    assert asyncio.run(scenario()) == 3
