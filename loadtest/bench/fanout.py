"""The rooms-fanout row of `make bench`: N members of one room (service/rooms/) held through nginx, spread by
the kernel over the workers, and a publisher POSTing M messages/s, then 2M, 4M, ... (or M/2, M/4, ... when M
does not hold) for BENCH_SECONDS each:
deliveries/s, publish-to-receive p50/p99, server CPU (app, nginx, Redis) per delivery, messages missed,
and the largest fan-out (deliveries/s) whose p99 stays within P99_BOUND_MS.

The members are one asyncio process (websockets), like the ws-held row; it reports its own CPU: a client
above CPU_LIMIT measured itself as much as the server, and the search stops there.
"""

from __future__ import annotations

import asyncio
import json
import resource
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from loadtest.bench.capacity import CONNECT_TIMEOUT_S, HANDSHAKES_AT_ONCE, percentile
from loadtest.bench.wrk import cpu_seconds
from loadtest.limits import CPU_LIMIT

P99_BOUND_MS = 250.0
MAX_STEPS = 6  # M, 2M, ... 32M, or M, M/2, ... M/32
SETTLE_S = 2.0  # after a step, for the last messages to arrive


@dataclass
class Members:
    sockets: list[ClientConnection] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    step = 0
    received: dict[int, int] = field(default_factory=dict)  # step -> frames
    latencies: dict[int, list[float]] = field(default_factory=dict)  # step -> ms
    closes: dict[str, int] = field(default_factory=dict)

    def record(self, raw: str | bytes, arrived: float) -> None:
        data = json.loads(raw)["data"]
        step = int(data["s"])
        self.received[step] = self.received.get(step, 0) + 1
        self.latencies.setdefault(step, []).append((arrived - float(data["t"])) * 1000)


async def join(url: str, members: Members, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            socket = await connect(url, proxy=None, open_timeout=CONNECT_TIMEOUT_S, ping_interval=None)
        except (OSError, TimeoutError, WebSocketException) as error:
            reason = type(error).__name__
            members.failed[reason] = members.failed.get(reason, 0) + 1
            return
        members.sockets.append(socket)


async def listen(socket: ClientConnection, members: Members) -> None:
    try:
        async for raw in socket:
            members.record(raw, time.time())
    except WebSocketException:
        pass
    code = str(socket.close_code) if socket.close_code is not None else "none"
    members.closes[code] = members.closes.get(code, 0) + 1


async def publish(url: str, rate: float, seconds: float, step: int) -> tuple[int, int]:
    """(accepted, refused) POSTs at `rate`/s for `seconds`, a few in flight so that one slow answer does
    not hold the rate."""
    accepted = refused = 0
    period = 1.0 / rate
    started = time.monotonic()
    async with httpx2.AsyncClient(timeout=10) as client:

        async def one(n: int) -> None:
            nonlocal accepted, refused
            body = {"data": {"s": step, "n": n, "t": time.time()}}
            try:
                answer = await client.post(url, json=body)
                ok = answer.status_code == 202
            except httpx2.HTTPError:
                ok = False
            accepted, refused = accepted + ok, refused + (not ok)

        pending: set[asyncio.Task[None]] = set()
        for n in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, started + n * period - time.monotonic()))
            task = asyncio.create_task(one(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    return accepted, refused


def raise_open_files(wanted: int) -> None:
    """This process holds every member's socket: the soft limit up to the hard one if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))


async def measure(
    ws_url: str,
    url: str,
    n: int,
    rate: float,
    seconds: float,
    roles: Callable[[], dict[str, list[int]]],
    steps: int = MAX_STEPS,
) -> dict[str, Any]:
    raise_open_files(n + 256)
    room = f"bench-{secrets.token_hex(4)}"
    members = Members()
    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    began = time.perf_counter()
    await asyncio.gather(*(join(f"{ws_url}/ws/rooms/{room}", members, gate) for _ in range(n)))
    connect_s = time.perf_counter() - began
    listeners = [asyncio.create_task(listen(s, members)) for s in members.sockets]
    me = psutil.Process()
    results: list[dict[str, Any]] = []
    step_rate = rate
    for step in range(steps):
        members.step = step
        pids = roles()
        server_before = {role: cpu_seconds(p) for role, p in pids.items()}
        client_before, wall_before = sum(me.cpu_times()[:2]), time.monotonic()
        accepted, refused = await publish(f"{url}/api/rooms/{room}/messages", step_rate, seconds, step)
        await asyncio.sleep(SETTLE_S)
        wall = time.monotonic() - wall_before
        server = {role: cpu_seconds(p) - server_before[role] for role, p in pids.items()}
        client_cpu = 100 * (sum(me.cpu_times()[:2]) - client_before) / wall
        delivered = members.received.get(step, 0)
        latencies = members.latencies.get(step, [])
        p99 = percentile(latencies, 99)
        results.append(
            {
                "rate": step_rate,
                "published": accepted,
                "refused": refused,
                "delivered": delivered,
                "missing": max(0, accepted * len(members.sockets) - delivered),
                "deliveries_per_s": round(delivered / seconds, 1),
                "p50_ms": percentile(latencies, 50),
                "p99_ms": p99,
                "server_cpu_us_per_delivery": round(1e6 * sum(server.values()) / delivered, 2)
                if delivered
                else None,
                "server_cpu_s_by_role": {role: round(s, 3) for role, s in server.items()},
                "client_cpu_percent": round(client_cpu, 1),
            }
        )
        held = p99 is not None and p99 <= P99_BOUND_MS and results[-1]["missing"] == 0 and not refused
        if client_cpu > CPU_LIMIT:
            break
        if held and all(r["rate"] <= step_rate for r in results):
            step_rate *= 2  # still holding: twice the rate
        elif not held and all(r["rate"] >= step_rate for r in results):
            step_rate /= 2  # the first rate did not hold: half of it, until one does
        else:
            break  # held after a miss, or missed after a hold: the edge is between the two
    await asyncio.gather(*(s.close() for s in members.sockets), return_exceptions=True)
    await asyncio.gather(*listeners, return_exceptions=True)
    first = results[0]
    within = [
        r for r in results if r["p99_ms"] is not None and r["p99_ms"] <= P99_BOUND_MS and not r["missing"]
    ]
    best = max(within, key=lambda r: r["deliveries_per_s"], default=None)
    return {
        "n": n,
        "connected": len(members.sockets),
        "failed_connects": members.failed,
        "connect_all_s": round(connect_s, 3),
        "rate": rate,
        "deliveries_per_s": first["deliveries_per_s"],
        "p50_ms": first["p50_ms"],
        "p99_ms": first["p99_ms"],
        "missing": sum(r["missing"] for r in results),
        "server_cpu_us_per_delivery": first["server_cpu_us_per_delivery"],
        "client_cpu_percent": first["client_cpu_percent"],
        "largest_fanout_per_s": best["deliveries_per_s"] if best else None,
        "largest_fanout_rate": best["rate"] if best else None,
        "client_bound": any(r["client_cpu_percent"] > CPU_LIMIT for r in results),
        "steps": results,
        "closes": members.closes,
        "errors": sum(members.failed.values()) + sum(r["refused"] for r in results),
    }


def rooms_fanout(
    ws_url: str,
    url: str,
    n: int,
    rate: float,
    seconds: float,
    roles: Callable[[], dict[str, list[int]]],
    short: bool,
) -> dict[str, Any]:
    return asyncio.run(measure(ws_url, url, n, rate, seconds, roles, 2 if short else MAX_STEPS))
