"""The demo app's own logic, in-process, served as gunicorn serves it: inside the platform (`served`).
Proxy and server behaviour is tested through the real stack; the platform alone in test_platform.py."""

import gc
import json
import logging

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from service import app as app_module
from service.app import create_app
from service.platform.asgi import Platform
from service.settings import Settings, load_settings


def served(settings: Settings) -> Platform:
    """The demo as our worker serves it: request id, deadline, metrics and probes are the platform's."""
    return Platform(create_app(settings), settings)


@pytest.fixture
def client() -> TestClient:
    settings = load_settings(app_request_timeout=0.5, app_max_delay=2, uvicorn_ws_max_size=64)
    with TestClient(served(settings)) as test_client:
        yield test_client


def test_ping_reports_the_worker_pid(client: TestClient) -> None:
    body = client.get("/api/ping").json()
    assert body["pong"] is True
    assert isinstance(body["pid"], int)


def test_echo_returns_the_text(client: TestClient) -> None:
    assert client.post("/api/echo", json={"text": "héllo"}).json()["text"] == "héllo"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "json_invalid"),
        (b'{"text": ""}', "string_too_short"),
        (b'{"other": 1}', "missing"),
        (b'{"text": "' + b"x" * 10_001 + b'"}', "string_too_long"),
    ],
)
def test_echo_rejects_bad_bodies_with_json_naming_the_problem(
    client: TestClient, body: bytes, problem: str
) -> None:
    response = client.post("/api/echo", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["layer"] == "app"
    assert problem in {p["type"] for p in response.json()["detail"]}


def test_delay_above_app_max_delay_is_refused(client: TestClient) -> None:
    response = client.get("/api/slow", params={"delay": 3})
    assert response.status_code == 422
    assert response.json()["detail"][0]["location"] == "query.delay"


def test_request_past_the_app_timeout_gets_a_json_504_from_the_app(client: TestClient) -> None:
    response = client.get("/api/slow", params={"delay": 1.5})
    assert response.status_code == 504
    assert response.json()["layer"] == "app"
    assert "APP_REQUEST_TIMEOUT" in response.json()["detail"]


def test_a_started_stream_is_not_cut_by_the_request_timeout(client: TestClient) -> None:
    response = client.get("/api/stream", params={"chunks": 4, "interval": 0.3})
    assert response.status_code == 200
    assert len(response.text.splitlines()) == 4


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    assert client.get("/nope").json()["error"] == "not_found"
    wrong = client.put("/api/ping")
    assert wrong.status_code == 405
    assert wrong.json()["layer"] == "app"


def test_unhandled_exception_is_a_json_500() -> None:
    app = create_app(load_settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert response.headers["connection"] == "close"


def test_the_demo_serves_no_health_or_metrics_route_of_its_own() -> None:
    paths = {route.path for route in create_app(load_settings()).routes}
    assert not paths & {"/healthz", "/readyz", "/metrics"}
    assert TestClient(create_app(load_settings())).get("/healthz").status_code == 404


def test_sync_route_runs_in_the_sized_threadpool() -> None:
    with TestClient(served(load_settings(app_threadpool_tokens=7))) as test_client:
        assert test_client.get("/api/sync", params={"delay": 0}).json()["threadpool_tokens"] == 7


def test_cpu_route_bounds_its_work(client: TestClient) -> None:
    assert client.get("/api/cpu", params={"work": 1000}).json()["work"] == 1000
    assert client.get("/api/cpu", params={"work": 10**9}).status_code == 422


def test_request_id_is_echoed(client: TestClient) -> None:
    assert client.get("/api/ping", headers={"X-Request-ID": "abc"}).headers["x-request-id"] == "abc"


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    client.get("/api/ping")
    client.get("/nope")
    text = client.get("/metrics").text
    assert 'app_requests_total{method="GET",route="/api/ping",status="200"}' in text
    assert 'route="unmatched",status="404"' in text


def test_ws_echo_text_and_binary(client: TestClient) -> None:
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_bytes() == b"\x00\x01"


def test_ws_echo_closes_oversize_messages_with_1009(client: TestClient) -> None:
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text("x" * 65)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1009


def test_ws_ticker_pushes_until_the_client_leaves(client: TestClient) -> None:
    with client.websocket_connect("/ws/ticker?interval=0.05") as ws:
        pushes = [ws.receive_json() for _ in range(3)]
    assert [push["tick"] for push in pushes] == [0, 1, 2]
    assert pushes[2]["t"] - pushes[0]["t"] >= 0.09, "pushes should be an interval apart"


def test_a_delay_above_app_max_delay_gets_the_full_json_422(client: TestClient) -> None:
    assert client.get("/api/slow", params={"delay": 3}).json() == {
        "status": 422,
        "error": "invalid_request",
        "detail": [
            {
                "location": "query.delay",
                "message": "Input should be less than or equal to 2",
                "type": "less_than_equal",
            }
        ],
        "layer": "app",
        "request_id": None,
    }


def test_each_app_keeps_its_own_limits_and_documents_them() -> None:
    small = TestClient(create_app(load_settings(app_max_cpu_work=1000, app_max_text_length=5)))
    large = TestClient(create_app(load_settings(app_max_cpu_work=2000)))
    with small, large:
        assert small.get("/api/cpu", params={"work": 1500}).status_code == 422
        assert large.get("/api/cpu", params={"work": 1500}).status_code == 200
        schemas = [client.get("/openapi.json").json() for client in (small, large)]
    [work] = schemas[0]["paths"]["/api/cpu"]["get"]["parameters"]
    assert work["schema"] | {"minimum": 1, "maximum": 1000} == work["schema"]
    assert schemas[1]["paths"]["/api/cpu"]["get"]["parameters"][0]["schema"]["maximum"] == 2000
    assert schemas[0]["components"]["schemas"]["EchoIn"]["properties"]["text"]["maxLength"] == 5


def test_info_reports_only_the_knobs_the_app_process_receives(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["settings_layers"] == ["app", "rooms", "gunicorn", "uvicorn"]
    knobs = set(info["settings"])
    assert info["settings"]["app_max_delay"] == 2
    assert {"app_request_timeout", "web_concurrency", "gunicorn_keepalive", "uvicorn_ws_max_size"} <= knobs
    assert "rooms_send_queue" in knobs
    # REDIS_URL reaches the app but may hold a password: never shown
    assert not [knob for knob in knobs if knob.startswith(("nginx_", "locust_", "compose_", "redis_"))]
    assert not {"http_port", "runtime", "profile"} & knobs


@pytest.mark.parametrize("enabled", [0, 1])
def test_the_apps_access_line_is_written_only_when_app_access_log_is_on(enabled: int) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    collector = Collect()
    logging.getLogger("service.access").addHandler(collector)
    try:
        settings = load_settings(app_access_log=enabled, app_log_level="info")
        with TestClient(served(settings)) as client:
            client.get("/api/ping", headers={"X-Request-ID": "line-7"})
    finally:
        logging.getLogger("service.access").removeHandler(collector)
    logged = [json.loads(line) for line in lines if "line-7" in line]
    assert len(logged) == enabled
    if enabled:
        assert logged[0]["route"] == "/api/ping" and logged[0]["status"] == 200


def test_routes_are_registered_flat_with_the_document_include_router_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    flat = create_app(settings)
    monkeypatch.setattr(
        app_module, "add_flat", lambda app, router, responses: app.include_router(router, responses=responses)
    )
    included = create_app(settings)
    assert TestClient(flat).get("/openapi.json").content == TestClient(included).get("/openapi.json").content
    assert all(isinstance(route, Route | WebSocketRoute) for route in flat.router.routes)
    declared = [(route.path, route.name) for router in app_module.ROUTERS for route in router.routes]
    assert [(route.path, route.name) for route in flat.router.routes][-len(declared) :] == declared


@pytest.mark.parametrize("enabled", [0, 1])
def test_fastapis_native_opentelemetry_follows_app_opentelemetry(enabled: int) -> None:
    telemetry = create_app(load_settings(app_opentelemetry=enabled))._telemetry
    assert [telemetry[signal] for signal in ("tracing", "metrics", "logs")] == [bool(enabled)] * 3


def test_the_workers_gc_thresholds_are_set_at_startup() -> None:
    before = gc.get_threshold()
    try:
        with TestClient(served(load_settings(app_gc_threshold="40000, 15, 90"))):
            assert gc.get_threshold() == (40000, 15, 90)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
