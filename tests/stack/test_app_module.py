"""APP_MODULE and APP_SRC on the real stack: an app this test writes itself (not the demo) served by nginx ->
gunicorn -> our worker, inside the platform: its routes counted in the metrics, the probes answered, its
WebSockets given nginx's WebSocket timeouts where NGINX_WEBSOCKET_PATHS says."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest
import websocket

from tests.support.stack import make_stack, running

pytestmark = pytest.mark.stack

SHOP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def order(request):
    return JSONResponse({"order": request.path_params["order_id"]})


app = Starlette(routes=[Route("/orders/{order_id}", order)])
"""


def test_an_app_of_its_own_is_served_counted_and_probed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shop.py").write_text(SHOP)
    stack = make_stack(
        tmp_path / "run",
        APP_MODULE="shop:app",
        APP_SRC=str(src),
        WEB_CONCURRENCY="1",  # the worker that answers the scrape wrote its own counts just before
        APP_METRICS_PATH="/_platform/metrics",
    )
    with running(stack):
        for n in range(3):
            assert httpx2.get(f"{stack.url}/orders/{n}").json() == {"order": str(n)}
        assert httpx2.get(f"{stack.url}/api/ping").status_code == 404  # not the demo
        assert httpx2.get(f"{stack.url}/healthz").json() == {"status": "ok"}
        ready = httpx2.get(f"{stack.url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        # nginx's status port asks the app at APP_METRICS_PATH; the public port refuses that path itself
        text = httpx2.get(f"{stack.status_url}/metrics").text
        assert 'app_requests_total{method="GET",route="/orders/{order_id}",status="200"} 3.0' in text
        assert 'route="/orders/1"' not in text
        assert "app_worker_up 1.0" in text
        public = httpx2.get(f"{stack.url}/_platform/metrics")
        assert public.status_code == 404 and public.json()["layer"] == "nginx"


CHAT = """
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute


async def echo(websocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


app = Starlette(routes=[WebSocketRoute("/chat/socket", echo), WebSocketRoute("/feed/socket", echo)])
"""


def idle_lifetime(url: str, wait: float) -> float | None:
    """Seconds until nginx cuts a WebSocket that sends nothing, or None when it is still open after `wait`
    (then it still echoes). Server pings are answered inside recv_data, as websocket-client does."""
    ws = websocket.create_connection(url, timeout=wait)
    opened = time.monotonic()
    try:
        while (left := wait - (time.monotonic() - opened)) > 0:
            ws.settimeout(max(0.05, left))
            try:
                opcode, _ = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                break
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                return time.monotonic() - opened
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return time.monotonic() - opened
        ws.settimeout(5)
        ws.send("still here")
        assert ws.recv() == "still here"
        return None
    finally:
        ws.close()


def test_a_websocket_under_nginx_websocket_paths_outlives_the_http_read_timeout(tmp_path: Path) -> None:
    """The app's WebSocket at /chat/socket (NGINX_WEBSOCKET_PATHS=/chat/) gets NGINX_WS_READ_TIMEOUT=4 s and
    stays open, silent, past NGINX_PROXY_READ_TIMEOUT=1 s; the same endpoint at /feed/socket, under no
    entry, is proxied as HTTP and cut after 1 s, before uvicorn's first ping (2 s)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "chat.py").write_text(CHAT)
    stack = make_stack(
        tmp_path / "run",
        APP_MODULE="chat:app",
        APP_SRC=str(src),
        WEB_CONCURRENCY="1",
        NGINX_WORKER_PROCESSES="1",
        NGINX_WEBSOCKET_PATHS="/chat/",
        NGINX_PROXY_READ_TIMEOUT="1",
        APP_REQUEST_TIMEOUT="0.5",  # rule 3: 0.5 < 1
        NGINX_WS_READ_TIMEOUT="4",
        UVICORN_WS_PING_INTERVAL="2",
        UVICORN_WS_PING_TIMEOUT="1",  # rule 2: 2 + 1 < 4
    )
    with running(stack):
        assert idle_lifetime(f"{stack.ws_url}/chat/socket", wait=3) is None
        cut = idle_lifetime(f"{stack.ws_url}/feed/socket", wait=3)
        assert cut is not None, "/feed/socket is under no NGINX_WEBSOCKET_PATHS entry, yet outlived 1 s"
        assert 0.8 < cut < 2.0
