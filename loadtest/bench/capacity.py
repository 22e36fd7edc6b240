"""The capacity rows of `make bench`: many slow requests held at once (wrk, one request per connection at a
time), and many WebSockets held (an asyncio client: connect them all, echo once on each, hold, echo again)
with the app workers' memory before and after."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from loadtest.bench.servers import worker_rss
from loadtest.bench.wrk import run_wrk

CONNECT_TIMEOUT_S = 10.0
ECHO_TIMEOUT_S = 10.0
HANDSHAKES_AT_ONCE = 100
ECHOES_AT_ONCE = 50  # a round trip measures the server's answer, not a queue of N messages sent at once
SETTLE_S = 0.5
TIMEOUT_MARGIN_S = 10.0


def slow_held(
    wrk: str,
    url: str,
    n: int,
    delay: float,
    seconds: float,
    out_dir: Path,
    server_roles: Callable[[], dict[str, list[int]]],
) -> dict[str, Any]:
    """N connections, each asking /api/slow?delay=D again as soon as it is answered: N held at once."""
    run = run_wrk(
        wrk,
        f"{url}/api/slow?delay={delay:g}",
        max(seconds, 3 * delay),
        n,
        delay + TIMEOUT_MARGIN_S,
        out_dir,
        server_roles,
    )
    return {
        "n": n,
        "delay_s": delay,
        **run.fields(),
        "p99_over_delay_ms": round(run.p99_ms - delay * 1000, 3),
    }


@dataclass
class Held:
    sockets: list[ClientConnection] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)

    def fail(self, error: BaseException) -> None:
        reason = type(error).__name__
        self.failed[reason] = self.failed.get(reason, 0) + 1


async def open_one(url: str, held: Held, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            # compression offered as browsers do; no proxy from the environment; the server pings.
            socket = await connect(url, proxy=None, open_timeout=CONNECT_TIMEOUT_S, ping_interval=None)
        except (OSError, TimeoutError, WebSocketException) as error:
            held.fail(error)
            return
        held.sockets.append(socket)


async def echo(socket: ClientConnection, gate: asyncio.Semaphore) -> float | None:
    """One text round trip in ms; None when the socket is gone."""
    async with gate:
        started = time.perf_counter()
        try:
            await socket.send("ping")
            async with asyncio.timeout(ECHO_TIMEOUT_S):
                answer = await socket.recv()
        except (OSError, TimeoutError, WebSocketException):
            return None
        return (time.perf_counter() - started) * 1000 if answer == "ping" else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 3)


async def hold_websockets(
    ws_url: str, n: int, seconds: float, worker_pids: Callable[[], list[int]]
) -> dict[str, Any]:
    url = f"{ws_url}/ws/echo"
    workers_before = worker_pids()
    rss_before = worker_rss(workers_before)
    held = Held()
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    started = time.perf_counter()
    await asyncio.gather(*(open_one(url, held, gate) for _ in range(n)))
    connect_s = time.perf_counter() - started
    await asyncio.sleep(SETTLE_S)
    echoes = asyncio.Semaphore(ECHOES_AT_ONCE)
    first = await asyncio.gather(*(echo(s, echoes) for s in held.sockets))
    rss_held = worker_rss(worker_pids())
    await asyncio.sleep(seconds)
    rss_end = worker_rss(worker_pids())
    second = await asyncio.gather(*(echo(s, echoes) for s in held.sockets))
    await asyncio.gather(*(s.close() for s in held.sockets), return_exceptions=True)
    connected = len(held.sockets)
    round_trips = [ms for ms in (*first, *second) if ms is not None]
    dropped = sum(1 for a, b in zip(first, second, strict=True) if a is None or b is None)
    recycled = sorted(set(workers_before) - set(worker_pids()))
    return {
        "n": n,
        "connected": connected,
        "failed_connects": held.failed,
        "drops": dropped,
        "errors": dropped + sum(held.failed.values()),
        "connect_all_s": round(connect_s, 3),
        "held_s": seconds,
        "rtt_p50_ms": percentile(round_trips, 50),
        "rtt_p99_ms": percentile(round_trips, 99),
        "worker_rss_before_mib": round(rss_before / 2**20, 1),
        "worker_rss_held_mib": round(rss_held / 2**20, 1),
        "worker_rss_end_mib": round(rss_end / 2**20, 1),
        "rss_kib_per_ws": round((rss_held - rss_before) / 1024 / connected, 1) if connected else None,
        "workers_replaced": len(recycled),
    }


def websockets_held(
    ws_url: str, n: int, seconds: float, worker_pids: Callable[[], list[int]]
) -> dict[str, Any]:
    return asyncio.run(hold_websockets(ws_url, n, seconds, worker_pids))
