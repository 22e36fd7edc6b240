"""Each router is a unit: a bare FastAPI app with that router and the settings it reads serves it.

These apps have none of create_app's error handlers, so their 422s are FastAPI's own bodies: a limit that
comes from Settings is compared with the same limit declared in a signature.
"""

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, FastAPI, Query, WebSocket
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from service import routes
from service.settings import APP_PROCESS_LAYERS, Settings, fields_of, load_settings


def unit(router: APIRouter, settings: Settings | None = None) -> TestClient:
    app = FastAPI()
    if settings:
        app.state.settings = settings
    app.include_router(router)
    return TestClient(app)


def declared_limits() -> TestClient:
    """The routes as they were declared before the limits moved into dependencies: APP_MAX_* = 2 and 5."""
    app = FastAPI()

    class EchoIn(BaseModel):
        text: str = Field(min_length=1, max_length=5)

    @app.get("/api/slow")
    async def slow(delay: Annotated[float, Query(ge=0, le=2)] = 1.0) -> None:
        return None

    @app.get("/api/stream")
    async def stream(
        chunks: Annotated[int, Query(ge=1, le=5)] = 5, interval: Annotated[float, Query(ge=0, le=2)] = 0.5
    ) -> None:
        return None

    @app.post("/api/echo")
    async def echo(message: EchoIn) -> None:
        return None

    @app.websocket("/ws/ticker")
    async def ticker(websocket: WebSocket, interval: Annotated[float, Query(gt=0, le=2)] = 1.0) -> None:
        await websocket.close()

    return TestClient(app)


LIMITS = load_settings(app_max_delay=2, app_max_text_length=5, app_max_stream_chunks=5)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/api/slow?delay=3", None),
        ("GET", "/api/slow?delay=inf", None),
        ("GET", "/api/slow?delay=-1", None),
        ("GET", "/api/stream?chunks=6&interval=2.5", None),
        ("GET", "/api/stream?interval=9", None),
        ("POST", "/api/echo", {"text": "toolong"}),
        ("POST", "/api/echo", {"text": ""}),
    ],
)
def test_a_limit_from_settings_fails_exactly_like_a_declared_one(
    method: str, url: str, body: dict[str, Any] | None
) -> None:
    with unit(routes.demo, LIMITS) as client, declared_limits() as reference:
        response = client.request(method, url, json=body)
        expected = reference.request(method, url, json=body)
    assert response.status_code == expected.status_code == 422
    assert response.json() == expected.json()


def test_values_within_the_limits_of_its_app_are_served() -> None:
    with unit(routes.demo, LIMITS) as client:
        assert client.get("/api/slow", params={"delay": 0}).json()["delay"] == 0
        assert client.post("/api/echo", json={"text": "fits!"}).json()["length"] == 5
        assert len(client.get("/api/stream", params={"chunks": 5, "interval": 0}).text.splitlines()) == 5


def test_a_default_above_the_limit_is_not_refused_like_a_declared_one() -> None:
    with unit(routes.demo, load_settings(app_max_stream_chunks=3)) as client:
        assert len(client.get("/api/stream", params={"interval": 0}).text.splitlines()) == 5


def test_the_settings_dependency_is_the_only_seam() -> None:
    app = FastAPI()
    app.include_router(routes.demo)
    app.dependency_overrides[routes.app_settings] = lambda: load_settings(app_max_cpu_work=10)
    with TestClient(app) as client:
        assert client.get("/api/cpu", params={"work": 10}).json()["work"] == 10
        assert client.get("/api/cpu", params={"work": 11}).status_code == 422


def test_a_ticker_interval_over_the_limit_closes_like_a_declared_one() -> None:
    closed = []
    for client in (unit(routes.websockets, LIMITS), declared_limits()):
        with (
            client,
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/ws/ticker?interval=3"),
        ):
            pass
        closed.append((refused.value.code, refused.value.reason))
    assert closed[0] == closed[1]
    assert closed[0][0] == 1008


def test_the_websocket_router_reads_its_apps_message_limit() -> None:
    with (
        unit(routes.websockets, load_settings(uvicorn_ws_max_size=4)) as client,
        client.websocket_connect("/ws/echo") as ws,
    ):
        ws.send_text("four")
        assert ws.receive_text() == "four"
        ws.send_text("fives")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1009


def test_info_reports_the_app_process_layers_alone() -> None:
    with unit(routes.introspection, load_settings(gunicorn_keepalive=21)) as client:
        info = client.get("/api/info").json()
    assert list(info["settings"]) == list(fields_of(*APP_PROCESS_LAYERS))
    assert info["settings"]["gunicorn_keepalive"] == 21
    assert info["settings_layers"] == ["app", "rooms", "gunicorn", "uvicorn"]


def test_a_stream_longer_than_app_max_stream_seconds_is_refused_naming_both() -> None:
    settings = load_settings(app_max_stream_seconds=1.0, app_max_delay=60, app_max_stream_chunks=1000)
    with unit(routes.demo, settings) as client:
        refused = client.get("/api/stream", params={"chunks": 1000, "interval": 60})
        assert refused.status_code == 422
        [problem] = refused.json()["detail"]
        assert problem["loc"] == ["query", "interval"] and "APP_MAX_STREAM_SECONDS=1" in problem["msg"]
        assert client.get("/api/stream", params={"chunks": 3, "interval": 0.5}).status_code == 200
        assert client.get("/api/stream", params={"chunks": 1, "interval": 60}).status_code == 200
