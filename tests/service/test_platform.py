"""The platform around apps written here: a bare ASGI function, a Starlette app, a FastAPI app. What each
gets is the same: request ids, metrics by route template (capped), in flight, WebSockets open, liveness,
readiness (503 while draining), metrics, the time-to-first-byte deadline and the app's lifespan."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from deploy.stackctl.config import ROOT
from service.platform import lifecycle, metrics
from service.platform.asgi import Platform
from service.settings import load_settings


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """No framework, no lifespan: it refuses every scope but HTTP, as many hand-written apps do."""
    if scope["type"] != "http":
        raise RuntimeError(f"HTTP only, not {scope['type']}")
    body = json.dumps({"path": scope["path"]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params["s"]))
    return PlainTextResponse("late")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.receive_text()  # until the client leaves


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/slow", slow),
            Route("/a", plain),
            Route("/b", plain),
            Route("/c", plain),
            WebSocketRoute("/ws", echo),
        ]
    )


def fastapi_app(started: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        started.append("up")
        yield {"greeting": "hello"}
        started.append("down")

    app = FastAPI(lifespan=lifespan)

    @app.get("/orders/{order_id}")
    async def order(order_id: int, request: Request) -> dict[str, Any]:
        return {"order": order_id, "greeting": request.state.greeting}

    @app.get("/slow")
    async def slow_order(s: float) -> dict[str, str]:
        await asyncio.sleep(s)
        return {"late": "yes"}

    @app.get("/tokens")
    async def tokens() -> dict[str, float]:
        return {"tokens": anyio.to_thread.current_default_thread_limiter().total_tokens}

    return app


def sample(name: str, **labels: str) -> float:
    """A sample of the platform's exposition, 0 when it has no such series yet."""
    text = metrics.exposition()[0].decode()
    wanted = "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(f"{name}{wanted} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def requests(route: str, status: int = 200, method: str = "GET") -> float:
    return sample("app_requests_total", method=method, route=route, status=str(status))


@pytest.fixture(autouse=True)
def not_draining() -> Iterator[None]:
    lifecycle.draining.clear()
    yield
    lifecycle.draining.clear()
    gc.unfreeze()  # the platform freezes after startup, as each worker does once


@pytest.mark.parametrize("kind", ["bare", "starlette", "fastapi"])
def test_every_kind_of_app_gets_the_probes_and_request_ids_before_its_own_routes(kind: str) -> None:
    app = {"bare": bare, "starlette": starlette_app(), "fastapi": fastapi_app([])}[kind]
    with TestClient(Platform(app, load_settings())) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert "app_requests_total" in client.get("/metrics").text
        kept = client.get("/healthz", headers={"X-Request-ID": "trace-9"})
        assert kept.headers["x-request-id"] == "trace-9"
        made = client.get("/items/1" if kind == "starlette" else "/orders/1")
        assert made.status_code == 200
        assert len(made.headers["x-request-id"]) == 32


def test_a_bare_app_is_served_and_counted_as_unmatched() -> None:
    before = requests("unmatched")
    with TestClient(Platform(bare, load_settings())) as client:
        assert client.get("/anything").json() == {"path": "/anything"}
    assert requests("unmatched") - before == 1


def test_readiness_turns_503_json_while_the_worker_drains_and_liveness_does_not() -> None:
    with TestClient(Platform(bare, load_settings())) as client:
        lifecycle.draining.set()
        response = client.get("/readyz", headers={"X-Request-ID": "drain-1"})
        assert response.status_code == 503
        assert response.json() == {
            "status": 503,
            "error": "draining",
            "detail": "worker is shutting down",
            "layer": "app",
            "request_id": "drain-1",
        }
        assert client.get("/healthz").status_code == 200


def test_the_platform_paths_are_knobs() -> None:
    settings = load_settings(
        app_liveness_path="/live", app_readiness_path="/ready/now", app_metrics_path="/_platform/metrics"
    )
    with TestClient(Platform(bare, settings)) as client:
        assert client.get("/live").json() == {"status": "ok"}
        assert client.get("/ready/now").json()["status"] == "ready"
        assert "app_requests_total" in client.get("/_platform/metrics").text
        assert client.get("/healthz").json() == {"path": "/healthz"}  # the app's own now


def test_a_probe_takes_get_and_head_only() -> None:
    with TestClient(Platform(bare, load_settings())) as client:
        assert client.head("/readyz").status_code == 200
        refused = client.post("/healthz")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["layer"] == "app" and refused.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
def test_requests_are_counted_by_route_template_not_by_path(kind: str) -> None:
    template = "/items/{item_id}" if kind == "starlette" else "/orders/{order_id}"
    app = starlette_app() if kind == "starlette" else fastapi_app([])
    before, missing = requests(template), requests("unmatched", 404)
    with TestClient(Platform(app, load_settings())) as client:
        for n in range(3):
            assert client.get(template.split("{")[0] + str(n)).status_code == 200
        assert client.get("/no/such/route").status_code == 404
    assert requests(template) - before == 3
    assert requests("unmatched", 404) - missing == 1
    text = metrics.exposition()[0].decode()
    assert 'route="/items/1"' not in text and 'route="/orders/1"' not in text


def test_routes_past_app_metrics_max_routes_share_the_overflow_label() -> None:
    before = {route: requests(route) for route in ("/a", "/b", "/c", "overflow", "/healthz")}
    with TestClient(Platform(starlette_app(), load_settings(app_metrics_max_routes=2))) as client:
        for path in ("/a", "/b", "/c", "/c", "/a", "/healthz"):
            assert client.get(path).status_code == 200
    after = {route: requests(route) - before[route] for route in before}
    # the platform's own paths do not use up the budget
    assert after == {"/a": 2, "/b": 1, "/c": 0, "overflow": 2, "/healthz": 1}


def test_the_deadline_answers_a_json_504_for_any_app() -> None:
    settings = load_settings(app_request_timeout=0.2)
    for app, url in ((starlette_app(), "/slow?s=2"), (fastapi_app([]), "/slow?s=2")):
        with TestClient(Platform(app, settings)) as client:
            response = client.get(url, headers={"X-Request-ID": "late-1"})
        assert response.status_code == 504
        assert response.json() == {
            "status": 504,
            "error": "request_timeout",
            "detail": "no response within APP_REQUEST_TIMEOUT=0.2s",
            "layer": "app",
            "request_id": "late-1",
        }


def test_open_websockets_are_counted_while_open() -> None:
    before = sample("app_websockets_open")
    with (
        TestClient(Platform(starlette_app(), load_settings())) as client,
        client.websocket_connect("/ws") as first,
        client.websocket_connect("/ws") as second,
    ):
        first.send_text("hi")
        second.send_text("ho")
        assert (first.receive_text(), second.receive_text()) == ("hi", "ho")
        assert sample("app_websockets_open") - before == 2
        first.send_text("bye")
        second.send_text("bye")
    assert sample("app_websockets_open") == before


def test_the_apps_lifespan_runs_inside_the_platforms_and_the_worker_is_tuned() -> None:
    started: list[str] = []
    before = gc.get_threshold()
    settings = load_settings(app_gc_threshold="30000,11,12", app_threadpool_tokens=9)
    try:
        with TestClient(Platform(fastapi_app(started), settings)) as client:
            assert started == ["up"]
            assert client.get("/orders/7").json() == {"order": 7, "greeting": "hello"}  # lifespan state
            assert gc.get_threshold() == (30000, 11, 12)
            assert sample("app_worker_up") == 1
            assert client.get("/tokens").json() == {"tokens": 9}
        assert started == ["up", "down"]
    finally:
        gc.set_threshold(*before)


def lifespan_app(startup: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        if startup == "raise":
            raise RuntimeError("no database")
        if startup == "hang":
            await asyncio.sleep(60)
        if startup == "fail":
            await send({"type": "lifespan.startup.failed", "message": "Traceback ...\nKeyError: 'DSN'"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    return app


async def drive_lifespan(app: Any) -> list[Any]:
    """What uvicorn does at startup: send lifespan.startup, collect the answer."""
    events: asyncio.Queue[Any] = asyncio.Queue()
    await events.put({"type": "lifespan.startup"})
    answers: list[Any] = []

    async def send(message: Any) -> None:
        answers.append(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, events.get, send))
    while not answers:
        await asyncio.sleep(0.01)
    if answers[0]["type"] == "lifespan.startup.complete":
        await events.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    return answers


@pytest.mark.parametrize(
    ("startup", "said"),
    [
        ("raise", "APP_MODULE=shop:app: lifespan startup raised RuntimeError: no database"),
        ("fail", "APP_MODULE=shop:app: lifespan startup failed: KeyError: 'DSN'"),
        ("hang", "APP_MODULE=shop:app: lifespan startup did not finish within APP_STARTUP_TIMEOUT=0.3s"),
    ],
)
def test_a_startup_that_raises_fails_or_hangs_fails_the_platforms_startup_in_one_line(
    startup: str, said: str
) -> None:
    platform = Platform(lifespan_app(startup), load_settings(app_startup_timeout=0.3), name="shop:app")
    answers = asyncio.run(asyncio.wait_for(drive_lifespan(platform), 5))
    assert answers == [{"type": "lifespan.startup.failed", "message": said}]


def test_an_app_without_lifespan_starts_and_stops() -> None:
    answers = asyncio.run(drive_lifespan(Platform(bare, load_settings())))
    assert [a["type"] for a in answers] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_the_whole_platform_imports_and_serves_without_fastapi_or_starlette(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(
        textwrap.dedent(
            """
            async def app(scope, receive, send):
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"plain"})
            """
        )
    )
    script = textwrap.dedent(
        """
        import asyncio, importlib, pkgutil, sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("fastapi", "starlette"):
                    raise ImportError(f"{name} is not installed here")
                return None

        sys.meta_path.insert(0, Refuse())
        import service.platform
        names = [m.name for m in pkgutil.walk_packages(service.platform.__path__, "service.platform.")]
        for name in names:
            importlib.import_module(name)
        assert not [m for m in sys.modules if m.split(".")[0] in ("fastapi", "starlette")]

        from service.platform.serve import app
        sent = []
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}
        asyncio.run(app(scope, receive, send))
        asyncio.run(app({**scope, "path": "/healthz"}, receive, send))
        print(sorted(names), sent[1]["body"], sent[3]["body"])
        """
    )
    env = {"PATH": "/usr/bin:/bin", "APP_MODULE": "plain:app", "APP_SRC": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "service.platform.worker" in done.stdout and "service.platform.loader" in done.stdout
    assert done.stdout.strip().endswith("""b'plain' b'{"status":"ok"}'""")
