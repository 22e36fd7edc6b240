"""The OpenAPI contract holds on the wire: every answer the real stack gives — the app's, uvicorn's and
nginx's — is valid against the /openapi.json that stack serves, for every route and every error we can
provoke. Two stacks: one with short timeouts and a small concurrency limit, one with nginx's per-client
guards on (they would refuse the first stack's other tests)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from tests.support.contract import MALFORMED, Contract, exchange, refusal
from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack

# Within every ordering rule: APP_REQUEST_TIMEOUT 1 < NGINX_PROXY_READ_TIMEOUT 2; one pooled upstream
# connection (idle for 1 s at most) + no WebSockets < UVICORN_LIMIT_CONCURRENCY 4.
SHORT = {
    "WEB_CONCURRENCY": "1",
    "APP_REQUEST_TIMEOUT": "1",
    "NGINX_PROXY_READ_TIMEOUT": "2",
    "UVICORN_LIMIT_CONCURRENCY": "4",
    "NGINX_WORKER_PROCESSES": "1",
    "NGINX_UPSTREAM_KEEPALIVE": "1",
    "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "1",
    "APP_EXPECTED_WEBSOCKETS": "0",
    "NGINX_CLIENT_MAX_BODY_SIZE": "1k",
}
GUARDED = {
    "WEB_CONCURRENCY": "1",
    "NGINX_LIMIT_REQ_ENABLED": "1",
    "NGINX_LIMIT_REQ_RATE": "1",
    "NGINX_LIMIT_REQ_BURST": "1",
    "NGINX_LIMIT_CONN_ENABLED": "1",
    "NGINX_LIMIT_CONN": "1",
    "NGINX_CLIENT_BODY_TIMEOUT": "1",
}


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("contract-short"), **SHORT)) as stack_:
        yield stack_


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("contract-guarded"), **GUARDED)) as stack_:
        yield stack_


def contract_of(stack_: Stack) -> Contract:
    return Contract(httpx2.get(f"{stack_.url}/openapi.json").json())


@pytest.fixture(scope="module")
def contract(short: Stack) -> Contract:
    return contract_of(short)


def answer(
    contract: Contract, stack_: Stack, method: str, url: str, status: int, layer: str | None = None, **kw: Any
) -> Any:
    """Send the request through nginx; the answer has this status (and error layer) and is as documented."""
    response = httpx2.request(method, f"{stack_.url}{url}", timeout=10, **kw)
    assert response.status_code == status, response.text
    body = contract.check_response(response)
    if layer is not None:
        assert body["layer"] == layer
    return body


# The platform's probes (/healthz, /readyz) are not the app's routes and not in its document: see below.
OK = [
    ("GET", "/api/ping", {}),
    ("POST", "/api/echo", {"json": {"text": "héllo"}}),
    ("GET", "/api/slow?delay=0.1", {}),
    ("GET", "/api/blocking?delay=0.1", {}),
    ("GET", "/api/sync?delay=0.1", {}),
    ("GET", "/api/cpu?work=1000", {}),
    ("GET", "/api/stream?chunks=3&interval=0.1", {}),
    ("GET", "/api/info", {}),
    ("POST", "/api/rooms/lobby/messages", {"json": {"data": {"any": ["json", 1, None]}}}),
]
SUCCESS = {"/api/rooms/{room}/messages": 202}  # else 200


def test_every_documented_route_is_exercised(contract: Contract) -> None:
    exercised = {(method.lower(), contract.template_of(url.split("?")[0])) for method, url, _ in OK}
    assert {(method, path) for path, method in contract.operations()} == exercised


@pytest.mark.parametrize(("method", "url", "kw"), OK, ids=[url.split("?")[0] for _, url, _ in OK])
def test_every_route_answers_its_success_as_documented(
    contract: Contract, short: Stack, method: str, url: str, kw: dict[str, Any]
) -> None:
    answer(contract, short, method, url, SUCCESS.get(contract.template_of(url.split("?")[0]), 200), **kw)


def test_the_platforms_probes_answer_through_nginx_outside_the_apps_document(
    contract: Contract, short: Stack
) -> None:
    assert not {"/healthz", "/readyz", "/metrics"} & set(contract.document["paths"])
    assert httpx2.get(f"{short.url}/healthz").json() == {"status": "ok"}
    assert httpx2.get(f"{short.url}/readyz").json()["status"] == "ready"


def test_the_stream_is_ndjson_line_by_line(contract: Contract, short: Stack) -> None:
    lines = answer(contract, short, "GET", "/api/stream?chunks=3&interval=0.1", 200)
    assert [line["chunk"] for line in lines] == [0, 1, 2]


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "url", "kw", "status", "layer"),
    [
        ("GET", "/no/such/path", {}, 404, "app"),
        ("GET", "/metrics", {}, 404, "nginx"),
        ("GET", "/api/echo", {}, 405, "app"),
        ("TRACE", "/api/ping", {}, 405, "nginx"),
        ("GET", "/api/slow?delay=-1", {}, 422, "app"),
        ("GET", "/api/cpu?work=many", {}, 422, "app"),
        ("POST", "/api/echo", {"content": b"{oops", "headers": JSON}, 422, "app"),
        ("POST", "/api/echo", {"json": {"other": 1}}, 422, "app"),
        ("POST", "/api/echo", {"json": {"text": "x" * 2048}}, 413, "nginx"),
        ("GET", "/api/slow?delay=2", {}, 504, "app"),
    ],
    ids=lambda value: str(value) if isinstance(value, int) else None,
)
def test_errors_are_documented_for_their_layer(
    contract: Contract, short: Stack, method: str, url: str, kw: dict[str, Any], status: int, layer: str
) -> None:
    answer(contract, short, method, url, status, layer, **kw)


def raw_request(stack_: Stack, data: bytes, timeout: float = 5.0) -> bytes:
    """What nginx sends back for these bytes, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", int(stack_.env["HTTP_PORT"])), timeout=timeout) as sock:
        return exchange(sock, data)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_request_nginx_refuses_is_a_documented_json_error(
    contract: Contract, short: Stack, case: str
) -> None:
    data, status, error = MALFORMED[case]
    refusal(contract, raw_request(short, data), status, error)


def test_the_error_pages_are_not_public(contract: Contract, short: Stack) -> None:
    answer(contract, short, "GET", "/_edge/502", 404, "nginx")


def test_nginx_times_out_a_blocked_worker_with_a_documented_504(contract: Contract, short: Stack) -> None:
    # The blocked event loop cannot run the app's own deadline (1 s); nginx gives up after 2 s.
    answer(contract, short, "GET", "/api/blocking?delay=2.5", 504, "nginx")
    time.sleep(0.6)  # the worker's loop is free again


def test_uvicorn_over_capacity_is_a_documented_503(contract: Contract, short: Stack) -> None:
    def get(index: int) -> httpx2.Response:
        return httpx2.get(f"{short.url}/api/slow", params={"delay": 0.5, "n": index}, timeout=10)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(get, range(10)))
    bodies = [contract.check_response(response) for response in responses]
    refused = [body for response, body in zip(responses, bodies, strict=True) if response.status_code == 503]
    assert refused, [response.status_code for response in responses]
    assert {body["layer"] for body in refused} == {"uvicorn"}
    assert {response.status_code for response in responses} == {200, 503}


def test_a_killed_worker_is_nginxs_documented_502(contract: Contract, short: Stack) -> None:
    assert short.handle is not None
    [pid] = short.handle.worker_pids()
    # No pooled upstream connection left: nginx retries a request that fails on a reused one.
    time.sleep(int(SHORT["NGINX_UPSTREAM_KEEPALIVE_TIMEOUT"]) + 0.5)
    responses: list[httpx2.Response] = []
    request = threading.Thread(
        target=lambda: responses.append(httpx2.get(f"{short.url}/api/slow?delay=0.9", timeout=10))
    )
    request.start()
    time.sleep(0.4)
    os.kill(pid, signal.SIGKILL)
    request.join()
    assert responses[0].status_code == 502
    assert contract.check_response(responses[0])["layer"] == "nginx"
    deadline = time.monotonic() + 30
    while short.handle.worker_pids() in ([], [pid]) and time.monotonic() < deadline:
        time.sleep(0.2)
    answer(contract, short, "GET", "/api/ping", 200)


def test_nginx_rate_limit_is_a_documented_429(guarded: Stack) -> None:
    contract = contract_of(guarded)
    responses = [httpx2.get(f"{guarded.url}/api/ping") for _ in range(4)]
    bodies = [contract.check_response(response) for response in responses]
    limited = [body for response, body in zip(responses, bodies, strict=True) if response.status_code == 429]
    assert limited, [response.status_code for response in responses]
    assert {body["layer"] for body in limited} == {"nginx"}


def test_nginx_connection_limit_is_a_documented_503(guarded: Stack) -> None:
    contract = contract_of(guarded)
    # The holder's request is in progress while nginx waits for its body (on /healthz: no rate limit).
    with socket.create_connection(("127.0.0.1", int(guarded.env["HTTP_PORT"]))) as holder:
        holder.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n")
        time.sleep(0.2)
        second = answer(contract, guarded, "GET", "/healthz", 503, "nginx")
    assert second["error"] == "service_unavailable"


def test_a_too_slow_client_gets_no_answer_not_a_408(guarded: Stack) -> None:
    # The API description says so: nginx closes the connection after NGINX_CLIENT_BODY_TIMEOUT.
    started = time.monotonic()
    slow = b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n{"
    received = raw_request(guarded, slow)
    assert received == b""
    assert time.monotonic() - started < int(GUARDED["NGINX_CLIENT_BODY_TIMEOUT"]) + 2
