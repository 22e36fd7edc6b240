"""The service as a client sees it: through the real nginx, to the real gunicorn + uvicorn workers."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx2
import pytest
import websocket

from tests.support.stack import Stack

pytestmark = pytest.mark.stack


def test_ping_through_nginx(one_worker_stack: Stack) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/api/ping")
    assert response.status_code == 200
    assert response.json()["pong"] is True
    assert response.headers["server"] == "nginx"  # server_tokens off: no version
    assert response.headers["x-request-id"]


def test_request_id_reaches_the_app_and_comes_back(one_worker_stack: Stack) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/api/info", headers={"X-Request-ID": "trace-me-42"})
    assert response.json()["request_id"] == "trace-me-42"
    assert response.headers["x-request-id"] == "trace-me-42"


def test_200_slow_requests_share_one_worker_concurrently(one_worker_stack: Stack) -> None:
    async def run() -> list[dict[str, int]]:
        limits = httpx2.Limits(max_connections=250)
        async with httpx2.AsyncClient(limits=limits, timeout=60) as client:
            responses = await asyncio.gather(
                *(client.get(f"{one_worker_stack.url}/api/slow", params={"delay": 1}) for _ in range(200))
            )
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    started = time.monotonic()
    bodies = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert len({b["pid"] for b in bodies}) == 1
    assert max(b["concurrent"] for b in bodies) >= 100, "requests were not in flight together"
    assert elapsed < 10, f"200 x 1 s on one worker took {elapsed:.1f} s: they were served one by one"


def timed_get(url: str) -> float:
    started = time.monotonic()
    httpx2.get(url, timeout=30).raise_for_status()
    return time.monotonic() - started


def background_get(url: str) -> threading.Thread:
    thread = threading.Thread(target=lambda: httpx2.get(url, timeout=30))
    thread.start()
    time.sleep(0.3)
    return thread


def test_blocking_route_stalls_its_worker_and_slow_route_does_not(one_worker_stack: Stack) -> None:
    url = one_worker_stack.url
    slow = background_get(f"{url}/api/slow?delay=2")
    ping_beside_slow = timed_get(f"{url}/api/ping")
    slow.join()
    blocking = background_get(f"{url}/api/blocking?delay=2")
    ping_beside_blocking = timed_get(f"{url}/api/ping")
    blocking.join()
    assert ping_beside_slow < 0.5
    assert ping_beside_blocking > 1.2, "a ping beside time.sleep() in async def should wait for it"


def test_ws_echo_text_and_binary_through_nginx(one_worker_stack: Stack) -> None:
    ws = websocket.create_connection(f"{one_worker_stack.ws_url}/ws/echo", timeout=5)
    try:
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send_binary(b"\x00\xff")
        assert ws.recv() == b"\x00\xff"
    finally:
        ws.close()


def test_ws_oversize_message_closes_with_1009(one_worker_stack: Stack) -> None:
    # The stack runs with UVICORN_WS_MAX_SIZE=SMALL_WS_MAX_SIZE: see its comment in tests/support/stack.py.
    max_size = int(one_worker_stack.env["UVICORN_WS_MAX_SIZE"])
    ws = websocket.create_connection(f"{one_worker_stack.ws_url}/ws/echo", timeout=5)
    try:
        ws.send("x" * max_size)
        assert ws.recv() == "x" * max_size
        ws.send("x" * (max_size + 1))
        frame = ws.recv_frame()
    finally:
        ws.shutdown()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1009


def test_ws_ticker_pushes_through_nginx(one_worker_stack: Stack) -> None:
    ws = websocket.create_connection(f"{one_worker_stack.ws_url}/ws/ticker?interval=0.1", timeout=5)
    try:
        ticks = [json.loads(ws.recv())["tick"] for _ in range(3)]
    finally:
        ws.close()
    assert ticks == [0, 1, 2]


def test_stream_chunks_arrive_one_by_one(one_worker_stack: Stack) -> None:
    arrivals = []
    started = time.monotonic()
    with httpx2.stream(
        "GET", f"{one_worker_stack.url}/api/stream", params={"chunks": 4, "interval": 0.5}
    ) as r:
        for line in r.iter_lines():
            if line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    assert arrivals[0] < 1.0, "first chunk was held back (buffered) by the proxy"
    assert arrivals[-1] - arrivals[0] > 1.2


def test_app_timeout_is_the_apps_json_504(one_worker_stack: Stack) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/api/slow", params={"delay": 4}, timeout=30)
    assert response.status_code == 504
    assert response.json()["layer"] == "app"
    assert response.json()["error"] == "request_timeout"


def test_oversize_body_is_nginxs_json_413(one_worker_stack: Stack) -> None:
    response = httpx2.post(
        f"{one_worker_stack.url}/api/echo",
        content=b"x" * 2_000_000,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["layer"] == "nginx"


def test_malformed_json_is_a_json_422_from_the_app(one_worker_stack: Stack) -> None:
    response = httpx2.post(
        f"{one_worker_stack.url}/api/echo", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_unknown_route_is_json(one_worker_stack: Stack) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/no/such/route")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_spoofed_x_forwarded_for_is_not_the_client_address(one_worker_stack: Stack) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/api/info", headers={"X-Forwarded-For": "203.0.113.7"})
    assert response.json()["client"] == "127.0.0.1"


def test_metrics_are_not_public(one_worker_stack: Stack) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/metrics")
    assert response.status_code == 404
    assert response.json()["layer"] == "nginx"
    assert httpx2.get(f"{one_worker_stack.status_url}/stub_status").text.startswith("Active connections")


def test_metrics_count_requests_of_every_worker(two_worker_stack: Stack) -> None:
    async def run() -> set[int]:
        async with httpx2.AsyncClient(limits=httpx2.Limits(max_connections=60), timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get(f"{two_worker_stack.url}/api/slow", params={"delay": 0.5}) for _ in range(60))
            )
        return {r.json()["pid"] for r in responses}

    # Which worker accepts is the kernel's choice: on a busy machine one may take a whole round.
    pids, rounds = asyncio.run(run()), 1
    while len(pids) < 2 and rounds < 5:
        pids, rounds = pids | asyncio.run(run()), rounds + 1
    assert len(pids) == 2, f"expected both workers to serve, got {pids}"

    def scrape() -> tuple[float, str]:
        text = httpx2.get(f"{two_worker_stack.status_url}/metrics").text
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('app_requests_total{method="GET",route="/api/slow",status="200"}')
        )
        return served, text

    # A worker writes its counts once per event-loop turn, just after the response went out, so the other
    # worker may answer this scrape a moment before the last count is written.
    deadline = time.monotonic() + 2
    served, text = scrape()
    while served < 60 * rounds and time.monotonic() < deadline:
        time.sleep(0.05)
        served, text = scrape()
    assert served == 60 * rounds
    assert "app_worker_up 2.0" in text


@pytest.mark.parametrize("sent", ['a"b', "x" * 129, "two words", "bad\\id"])
def test_a_request_id_that_is_not_a_plain_token_is_replaced_so_error_bodies_stay_json(
    one_worker_stack: Stack, sent: str
) -> None:
    response = httpx2.get(f"{one_worker_stack.url}/metrics", headers={"X-Request-ID": sent})  # nginx's 404
    assert response.status_code == 404
    body = response.json()  # a client's quote would have broken nginx's JSON
    assert body["layer"] == "nginx" and body["request_id"] != sent
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"]), "nginx's own $request_id instead"
    assert response.headers["x-request-id"] == body["request_id"]
