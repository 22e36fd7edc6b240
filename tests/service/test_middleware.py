"""RequestContextMiddleware on a tiny inline ASGI app: deadlines on one timer, the request id, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram

from service.platform import metrics
from service.platform.middleware import RequestContextMiddleware, request_ids

Message = dict[str, Any]


async def sleepy(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 after ?s seconds (a started answer then waits ?tail seconds before its body ends)."""
    query = dict(part.split("=") for part in scope["query_string"].decode().split("&") if part)
    await asyncio.sleep(float(query.get("s", 0)))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(float(query.get("tail", 0)))
    await send({"type": "http.response.body", "body": b"ok"})


def scope(query: str = "", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/sleepy",
        "query_string": query.encode(),
        "headers": headers or [],
    }


async def call(app: Any, query: str = "", headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append({**message, "at": time.monotonic()})

    await app(scope(query, headers), receive, send)
    return sent


def status(messages: list[Message]) -> int:
    return int(messages[0]["status"])


def test_each_request_past_its_deadline_gets_504_on_time_and_the_others_do_not() -> None:
    app = RequestContextMiddleware(sleepy, request_timeout=0.3)

    async def run() -> list[tuple[float, list[Message]]]:
        async def later(delay: float, query: str) -> tuple[float, list[Message]]:
            await asyncio.sleep(delay)
            return time.monotonic(), await call(app, query)

        results = await asyncio.gather(
            later(0.0, "s=5"), later(0.1, "s=0"), later(0.15, "s=5"), later(0.2, "s=0.05&tail=0.5")
        )
        return list(results)

    results = asyncio.run(run())
    [slow_1, _, slow_2, started_stream] = results
    assert [status(messages) for _, messages in results] == [504, 200, 504, 200]
    for started, messages in (slow_1, slow_2):
        waited = messages[0]["at"] - started
        assert 0.29 < waited < 0.45, f"504 after {waited:.3f} s, deadline 0.3 s"
    assert started_stream[1][-1]["at"] - started_stream[0] > 0.5, "a started answer is not cut"
    assert not app.deadlines.pending and app.deadlines.timer is None


def test_a_cancel_that_is_not_the_deadline_propagates() -> None:
    app = RequestContextMiddleware(sleepy, request_timeout=5)

    async def run() -> None:
        task = asyncio.create_task(call(app, "s=5"))
        await asyncio.sleep(0.05)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())


def test_the_request_id_is_kept_or_made() -> None:
    app = RequestContextMiddleware(sleepy, request_timeout=5)
    given = asyncio.run(call(app, headers=[(b"x-request-id", b"trace-1")]))
    made = [asyncio.run(call(app))[0]["headers"][-1][1] for _ in range(2)]
    assert given[0]["headers"][-1] == (b"x-request-id", b"trace-1")
    assert len(made[0]) == 32 and made[0] != made[1]
    int(made[0], 16)


def test_a_forked_worker_makes_its_own_request_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a gunicorn worker is
        os.write(write, request_ids.new().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child, parent = os.read(read, 64).decode(), request_ids.new()
    os.close(read)
    os.close(write)
    assert len(child) == len(parent) == 32
    assert child[:16] != parent[:16], "each process draws its own random half"


def sample(name: str, labels: str = "") -> float:
    text = metrics.exposition()[0].decode()
    line = next(line for line in text.splitlines() if line.startswith(f"{name}{labels} "))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_count_every_request_in_flight_and_done() -> None:
    app = RequestContextMiddleware(sleepy, request_timeout=0.2)
    count = 'app_requests_total{method="GET",route="unmatched",status="%s"}'
    before_ok, before_timeout = sample(count % 200), sample(count % 504)

    async def run() -> float:
        task = asyncio.create_task(call(app, "s=0.1"))
        await asyncio.sleep(0.05)
        in_flight = sample("app_requests_in_flight")
        await asyncio.gather(task, call(app), call(app, "s=1"))
        return in_flight

    assert asyncio.run(run()) == 1
    assert (sample(count % 200) - before_ok, sample(count % 504) - before_timeout) == (2, 1)
    assert sample("app_requests_in_flight") == 0
    asyncio.run(call(app))  # the loop ends right after: the next scrape still counts it
    assert sample(count % 200) - before_ok == 3


def test_latencies_written_per_loop_turn_land_in_the_buckets_observe_would_use() -> None:
    durations = [0.0, 0.004, 0.005, 0.0051, 0.7, 1.0, 59.9, 61.0]
    route = "/batched"
    reference = Histogram("reference", "", buckets=metrics.LATENCY_BUCKETS, registry=CollectorRegistry())

    async def run() -> None:
        for seconds in durations:
            metrics.REQUEST_METRICS.started()
            metrics.REQUEST_METRICS.done("GET", route, 200, seconds)
            reference.observe(seconds)

    asyncio.run(run())
    metrics.REQUEST_METRICS.write()
    written = {
        (s.name.removeprefix("app_request_duration_seconds"), s.labels.get("le")): s.value
        for s in metrics.LATENCY.collect()[0].samples
        if s.labels["route"] == route
    }
    expected = {
        (s.name.removeprefix("reference"), s.labels.get("le")): s.value
        for s in reference.collect()[0].samples
        if not s.name.endswith("_created")
    }
    assert {key: value for key, value in written.items() if key[0] != "_created"} == pytest.approx(expected)


def closing_with(how: str) -> Any:
    """A WebSocket handler that accepts, then ends as `how` says: `app:<code>` closes with that code,
    `peer` waits for the client's disconnect, `return` ends without a close, `raise` fails."""

    async def handler(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if how.startswith("app:"):
            await send({"type": "websocket.close", "code": int(how.split(":")[1])})
        elif how == "peer":
            await receive()
        elif how == "raise":
            raise RuntimeError("handler failed")

    return handler


@pytest.mark.parametrize(
    ("how", "peer_code", "label"),
    [
        ("app:1008", 1000, "1008"),  # the app's own close wins over what the peer says after it
        ("app:4000", 1000, "other"),  # past the registered codes: one label for all
        ("peer", 1006, "1006"),  # nginx or the client dropped the connection without a close frame
        ("peer", 1012, "1012"),  # uvicorn's close at shutdown reaches the app as this disconnect
        ("return", 1000, "none"),
        ("raise", 1000, "none"),
    ],
)
def test_websocket_closes_are_counted_by_code(how: str, peer_code: int, label: str) -> None:
    app = RequestContextMiddleware(closing_with(how), request_timeout=1)
    counter = f'app_websocket_closes_total{{code="{label}"}}'
    before = sample(counter) if f"{counter} " in metrics.exposition()[0].decode() else 0.0
    incoming = iter([{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": peer_code}])

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        pass

    async def run() -> None:
        with contextlib.suppress(RuntimeError):
            await app({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    asyncio.run(run())
    assert sample(counter) - before == 1
    assert sample("app_websockets_open") == 0
