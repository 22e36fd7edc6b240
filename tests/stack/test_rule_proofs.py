"""Each ordering rule of failure-modes.md proven on the real stack: obeyed, the failure does not happen;
broken (started with ALLOW_UNSAFE_CONFIG=1), it does. Rule 1's 502 race is too narrow to provoke on
loopback in seconds, so its test proves the cause instead: which side closes idle upstream connections."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
import websocket

from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack

# One worker and one nginx worker so that "the worker" and "the pool" are deterministic.
SMALL = {"WEB_CONCURRENCY": "1", "NGINX_WORKER_PROCESSES": "1"}

# Every rule holds, with timeouts short enough to watch each layer act within seconds.
OBEYED = {
    **SMALL,
    "NGINX_WS_READ_TIMEOUT": "3",
    "UVICORN_WS_PING_INTERVAL": "1",
    "UVICORN_WS_PING_TIMEOUT": "1",  # rule 2: 1 + 1 < 3
    "APP_REQUEST_TIMEOUT": "1",
    "NGINX_PROXY_READ_TIMEOUT": "10",  # rule 3: 1 < 10 < LOCUST_CLIENT_TIMEOUT
    # rule 5: 1 < 3. Lower than 3 and a worker booting on a busy 2-CPU host misses its first heartbeat.
    # gunicorn kills a blocked worker 3-5 s into the block, before nginx's 10 s read timeout.
    "GUNICORN_TIMEOUT": "3",
    "APP_EXPECTED_BLOCKING": "1",
    "APP_STARTUP_TIMEOUT": "2",  # rule 5 (app startup): 2 < 3
    "UVICORN_LIMIT_CONCURRENCY": "5",
    "NGINX_UPSTREAM_KEEPALIVE": "2",
    "APP_EXPECTED_WEBSOCKETS": "2",  # rule 7: 2 x 1 + 2 < 5
}

# The same stack with rules 2, 3 and 7 broken on purpose.
BROKEN = {
    **OBEYED,
    "UVICORN_WS_PING_INTERVAL": "5",
    "UVICORN_WS_PING_TIMEOUT": "5",  # rule 2: 5 + 5 >= 3
    "APP_REQUEST_TIMEOUT": "3",
    "NGINX_PROXY_READ_TIMEOUT": "1",  # rule 3: 3 >= 1
    "UVICORN_LIMIT_CONCURRENCY": "4",
    "NGINX_UPSTREAM_KEEPALIVE": "1",
    "APP_EXPECTED_WEBSOCKETS": "3",  # rule 7: 1 x 1 + 3 >= 4
}


@pytest.fixture(scope="module")
def obeyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("rules-obeyed"), **OBEYED)) as stack:
        yield stack


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("rules-broken"), **BROKEN)
    refused = stack.stackctl("up")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert not stack.run_dir.joinpath("state.json").exists()
    started = stack.stackctl("up", ALLOW_UNSAFE_CONFIG="1")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "WARNING: ALLOW_UNSAFE_CONFIG=1" in started.stderr
    yield stack
    stack.down()


def idle_websocket_lifetime(stack: Stack, wait: float) -> float | None:
    """Seconds until an idle WebSocket is cut, or None if it is still open after `wait`.

    recv_data(control_frame=True) returns on each server ping after answering it with a pong (websocket-
    client answers pings only while receiving), so the loop can watch the clock."""
    ws = websocket.create_connection(f"{stack.ws_url}/ws/echo", timeout=wait)
    opened = time.monotonic()
    try:
        while (left := wait - (time.monotonic() - opened)) > 0:
            ws.settimeout(max(0.05, left))
            try:
                opcode, _ = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                return None
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                return time.monotonic() - opened
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return time.monotonic() - opened
        return None
    finally:
        ws.close()


def test_rule_2_pings_keep_an_idle_websocket_open_past_nginx_read_timeout(obeyed: Stack) -> None:
    assert idle_websocket_lifetime(obeyed, wait=6.5) is None


def test_rule_2_broken_nginx_cuts_the_idle_websocket(broken: Stack) -> None:
    lifetime = idle_websocket_lifetime(broken, wait=6.5)
    assert lifetime is not None, "the idle WebSocket survived NGINX_WS_READ_TIMEOUT=3 without pings"
    assert 2.5 < lifetime < 5.5


def timed(url: str) -> tuple[httpx2.Response, float]:
    started = time.monotonic()
    response = httpx2.get(url, timeout=30)
    return response, time.monotonic() - started


def test_rule_3_the_app_gives_up_first_with_its_json_504(obeyed: Stack) -> None:
    response, elapsed = timed(f"{obeyed.url}/api/slow?delay=5")
    assert response.status_code == 504
    assert response.json()["layer"] == "app"
    assert elapsed < 2.5


def test_rule_3_broken_nginx_gives_up_first_with_its_504(broken: Stack) -> None:
    response, elapsed = timed(f"{broken.url}/api/slow?delay=5")
    assert response.status_code == 504
    assert response.json()["layer"] == "nginx"
    assert elapsed < 2.5


def open_websockets(stack: Stack, count: int) -> list[websocket.WebSocket]:
    sockets = [websocket.create_connection(f"{stack.ws_url}/ws/echo", timeout=5) for _ in range(count)]
    for ws in sockets:  # each one is accepted by the app, so each holds an upstream connection
        ws.send("hi")
        assert ws.recv() == "hi"
    return sockets


def test_rule_7_expected_websockets_and_pool_leave_room_for_requests(obeyed: Stack) -> None:
    sockets = open_websockets(obeyed, 2)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda _: timed(f"{obeyed.url}/api/ping")[0].status_code, range(2)))
    finally:
        for ws in sockets:
            ws.close()
    assert statuses == [200, 200]


def test_rule_7_broken_idle_websockets_eat_the_limit_and_one_request_gets_503(broken: Stack) -> None:
    sockets = open_websockets(broken, 3)
    try:
        response, elapsed = timed(f"{broken.url}/api/ping")
    finally:
        for ws in sockets:
            ws.close()
    assert response.status_code == 503, "3 idle WebSockets + 1 request should reach the limit of 4"
    assert response.json()["layer"] == "uvicorn"
    assert elapsed < 1


def test_rule_7_above_the_limit_uvicorn_answers_503_at_once(obeyed: Stack) -> None:
    async def burst() -> list[tuple[int, str, float]]:
        async def one(client: httpx2.AsyncClient) -> tuple[int, str, float]:
            started = time.monotonic()
            response = await client.get(f"{obeyed.url}/api/slow", params={"delay": 0.8})
            return response.status_code, response.json().get("layer", ""), time.monotonic() - started

        async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=20)) as client:
            return await asyncio.gather(*(one(client) for _ in range(12)))

    results = asyncio.run(burst())
    over = [r for r in results if r[0] == 503]
    assert over and all(layer == "uvicorn" and elapsed < 0.5 for _, layer, elapsed in over)
    assert any(status == 200 for status, _, _ in results)


def worker_pid(stack: Stack) -> int:
    return int(httpx2.get(f"{stack.url}/api/ping", timeout=10).json()["pid"])


def test_rule_5_blocking_past_gunicorn_timeout_kills_the_worker(obeyed: Stack) -> None:
    before = worker_pid(obeyed)
    within, _ = timed(f"{obeyed.url}/api/blocking?delay=1")  # within APP_EXPECTED_BLOCKING
    assert within.status_code == 200 and worker_pid(obeyed) == before

    past, _ = timed(f"{obeyed.url}/api/blocking?delay=9")  # the demo route breaks rule 5 on purpose
    assert past.status_code == 502
    assert past.json()["layer"] == "nginx"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            after = worker_pid(obeyed)
            break
        except (httpx2.HTTPError, ValueError, KeyError):
            time.sleep(0.2)
    assert after != before, "gunicorn should have replaced the blocked worker"


def terminate_gunicorn_with_requests_in_flight(tmp_path: Path, **knobs: str) -> list[int]:
    """TERM the gunicorn master (what `docker compose stop` does) while 5 x /api/slow?delay=2 run."""
    stack = make_stack(tmp_path, **SMALL, **knobs)
    stack.up()
    try:
        gunicorn_pid = int(stack.run_dir.joinpath("gunicorn.pid").read_text())
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            in_flight = [pool.submit(timed, f"{stack.url}/api/slow?delay=2") for _ in range(5)]
            time.sleep(0.5)
            os.kill(gunicorn_pid, signal.SIGTERM)
            return [f.result()[0].status_code for f in in_flight]
    finally:
        stack.down()


def test_rule_4_in_flight_requests_finish_when_the_shutdown_order_holds(tmp_path: Path) -> None:
    statuses = terminate_gunicorn_with_requests_in_flight(
        tmp_path, UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN="4", GUNICORN_GRACEFUL_TIMEOUT="6"
    )
    assert statuses == [200] * 5


def test_rule_4_broken_gunicorn_sigkills_the_draining_worker_and_requests_get_502(tmp_path: Path) -> None:
    statuses = terminate_gunicorn_with_requests_in_flight(
        tmp_path,
        UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN="4",
        GUNICORN_GRACEFUL_TIMEOUT="1",
        ALLOW_UNSAFE_CONFIG="1",
    )
    assert statuses == [502] * 5


def test_rule_4_down_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, **SMALL)
    stack.up()
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        in_flight = [pool.submit(timed, f"{stack.url}/api/slow?delay=2") for _ in range(5)]
        time.sleep(0.5)
        down = stack.stackctl("down")
        statuses = [f.result()[0].status_code for f in in_flight]
    assert down.returncode == 0, down.stderr
    assert statuses == [200] * 5


def who_closes_idle_upstream_connections(stack: Stack) -> set[str]:
    """Fill nginx's upstream pool, let it idle, and see who closed: the side that closes a TCP
    connection first is the one left holding it in TIME_WAIT."""
    app_port = int(stack.env["GUNICORN_BIND"].rsplit(":", 1)[1])

    async def fill_pool() -> None:
        async with httpx2.AsyncClient(timeout=10) as client:
            url = f"{stack.url}/api/slow"
            await asyncio.gather(*(client.get(url, params={"delay": 0.3}) for _ in range(4)))

    asyncio.run(fill_pool())
    time.sleep(2.5)  # past the shorter keep-alive timeout (1 s), well before the longer one (5 s)
    closers = set()
    for connection in psutil.net_connections(kind="tcp4"):
        if connection.status != psutil.CONN_TIME_WAIT or not connection.raddr:
            continue
        if connection.laddr.port == app_port:
            closers.add("app")
        elif connection.raddr.port == app_port:
            closers.add("nginx")
    return closers


def test_rule_1_nginx_closes_idle_upstream_connections_only_when_its_keepalive_is_shorter(
    tmp_path: Path,
) -> None:
    obeyed = make_stack(
        tmp_path / "keepalive-obeyed", **SMALL, NGINX_UPSTREAM_KEEPALIVE_TIMEOUT="1", GUNICORN_KEEPALIVE="5"
    )
    broken = make_stack(
        tmp_path / "keepalive-broken", **SMALL, NGINX_UPSTREAM_KEEPALIVE_TIMEOUT="5", GUNICORN_KEEPALIVE="1"
    )
    obeyed.up()
    try:
        assert who_closes_idle_upstream_connections(obeyed) == {"nginx"}
    finally:
        obeyed.down()
    assert broken.stackctl("up").returncode == 1
    started = broken.stackctl("up", ALLOW_UNSAFE_CONFIG="1")
    assert started.returncode == 0, started.stderr
    try:
        # The app closes connections nginx still holds in its pool: the next request nginx sends on one
        # of them at that instant is the 502 of rule 1.
        assert who_closes_idle_upstream_connections(broken) == {"app"}
    finally:
        broken.down()
