"""service/platform/loader.py: APP_MODULE loaded with one line per failure, the CLI `make check` builds on,
the routes a platform path would shadow, and a real gunicorn that stops, not loops, on an app that fails."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute

from deploy.stackctl.config import ROOT
from deploy.stackctl.ports import free_port
from service.platform import loader
from service.settings import load_settings

ASGI = """
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
names = (f"userapp{n}_{os.getpid()}" for n in itertools.count())


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Writes a module into tmp_path (the APP_SRC) under a fresh name and returns that name."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    written: list[str] = []

    def write(source: str) -> str:
        name = next(names)
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def refused(spec: str, app_src: str) -> str:
    with pytest.raises(loader.AppLoadError) as error:
        loader.load(spec, app_src)
    line = str(error.value)
    assert "\n" not in line and line.startswith(f"APP_MODULE={spec}: ")
    return line.removeprefix(f"APP_MODULE={spec}: ")


def test_an_attribute_and_a_factory_both_load(module: Callable[[str], str], tmp_path: Path) -> None:
    name = module(ASGI + "\ndef create_app():\n    return app\n")
    assert loader.load(f"{name}:app", str(tmp_path)) is loader.load(f"{name}:create_app()", str(tmp_path))


def test_app_src_goes_first_on_the_import_path(module: Callable[[str], str], tmp_path: Path) -> None:
    sys.path.append(str(tmp_path))  # already there, but last
    loader.load(f"{module(ASGI)}:app", str(tmp_path))
    assert sys.path[0] == str(tmp_path)


@pytest.mark.parametrize(
    ("source", "attribute", "said"),
    [
        ("import a_dependency_nobody_installed\n", "app", "does not import: ModuleNotFoundError: No module"),
        ("def broken(:\n", "app", "does not import: SyntaxError: "),
        ("raise RuntimeError('no settings')\n", "app", "does not import: RuntimeError: no settings"),
        (ASGI, "application", "has no attribute application"),
        ("def create_app():\n    raise ValueError('DATABASE_URL is not set')\n", "create_app()",
         "create_app() raised ValueError: DATABASE_URL is not set"),
        ("app = 42\n", "app", "not an ASGI app: a int is not callable"),
        ("def app(environ, start_response):\n    return [b'wsgi']\n", "app",
         "not an ASGI app: app is a synchronous callable of two arguments, a WSGI app"),
        ("class App:\n    async def __call__(self, scope, receive, send): ...\n", "App",
         "not an ASGI app: App is a class; name an instance, or a factory as module:App()"),
        ("async def create_app():\n    return None\n", "create_app()",
         "create_app() returned an awaitable; a factory must be a plain def"),
        ("app = 42\n", "app()", "app is a int, not a factory to call"),
    ],
)  # fmt: skip
def test_each_bad_app_is_one_line_naming_app_module_and_the_apps_own_error(
    module: Callable[[str], str], tmp_path: Path, source: str, attribute: str, said: str
) -> None:
    name = module(source)
    line = refused(f"{name}:{attribute}", str(tmp_path))
    assert said in line, line
    if "does not import" in said:
        assert line.startswith(f"module {name} does not import: ")


def test_a_module_not_found_says_where_it_was_looked_for(tmp_path: Path) -> None:
    line = refused("nowhere_to_be_found:app", str(tmp_path))
    assert line.startswith("module nowhere_to_be_found does not import: ModuleNotFoundError")
    assert f"searched APP_SRC={tmp_path}" in line


def test_a_missing_app_src_is_named() -> None:
    with pytest.raises(loader.AppLoadError, match=r"^APP_SRC=/no/such/dir: no such directory"):
        loader.load("x:app", "/no/such/dir")


def test_the_apps_own_exception_is_kept_for_the_traceback(
    module: Callable[[str], str], tmp_path: Path
) -> None:
    name = module("def create_app():\n    raise ValueError('boom')\n")
    with pytest.raises(loader.AppLoadError) as error:
        loader.load(f"{name}:create_app()", str(tmp_path))
    assert isinstance(error.value.__cause__, ValueError)


# --- routes and shadows ---------------------------------------------------------------------------


async def ok(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_the_routes_of_starlette_and_fastapi_apps_are_listed_through_mounts_and_middleware() -> None:
    inner = Router(routes=[Route("/status", ok)])
    starlette = Starlette(
        routes=[
            Route("/items/{item_id}", ok),
            WebSocketRoute("/ws", ok),
            Mount("/admin", routes=[Route("/users", ok)]),
            Mount("/api", app=inner),
            Mount("/static", app=PlainTextResponse("files")),
        ]
    )
    assert loader.route_paths(CORSMiddleware(starlette, allow_origins=["*"])) == [
        "/items/{item_id}",
        "/ws",
        "/admin/users",
        "/api/status",
        "/static/{path:path}",
    ]
    orders, lines = APIRouter(prefix="/orders"), APIRouter(prefix="/lines")

    @lines.get("/{line}")
    async def line() -> None: ...

    @orders.get("/{order_id}")
    async def order() -> None: ...

    orders.include_router(lines)
    fastapi = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    fastapi.include_router(orders)
    assert loader.route_paths(fastapi) == ["/orders/{order_id}", "/orders/lines/{line}"]


def test_an_app_that_does_not_list_its_routes_gives_none() -> None:
    async def bare(scope: object, receive: object, send: object) -> None: ...

    assert loader.route_paths(bare) is None


PLATFORM = loader.platform_paths(load_settings())


def test_platform_paths_no_route_matches_are_fine() -> None:
    assert loader.shadowed(["/", "/items/{id}", "/health", "/metrics/extra"], PLATFORM) == []


def test_a_route_of_the_app_on_a_platform_path_is_an_error_naming_knob_path_and_route() -> None:
    [exact, template] = loader.shadowed(["/readyz", "/{page}"], {"APP_READINESS_PATH": "/readyz"})
    assert (exact.severity, template.severity) == ("error", "error")
    assert str(exact) == (
        "APP_READINESS_PATH=/readyz shadows the app's route /readyz: the platform answers /readyz before the "
        "app, whose handler never runs. Fix: set APP_READINESS_PATH to a path the app does not serve"
    )
    assert template.other == "/{page}"


def test_a_catch_all_or_a_mount_over_a_platform_path_is_a_warning() -> None:
    found = loader.shadowed(["/{full_path:path}", "/static/{path:path}"], PLATFORM)
    assert {(f.knob, f.severity) for f in found} == {
        ("APP_LIVENESS_PATH", "warning"),
        ("APP_READINESS_PATH", "warning"),
        ("APP_METRICS_PATH", "warning"),
    }


def test_two_platform_knobs_on_one_path_are_an_error() -> None:
    [twice] = loader.shadowed([], {"APP_LIVENESS_PATH": "/health", "APP_READINESS_PATH": "/health"})
    assert twice.severity == "error"
    assert str(twice).startswith("APP_READINESS_PATH=/health is APP_LIVENESS_PATH's path too")


def test_the_websocket_routes_of_starlette_and_fastapi_apps_are_told_apart() -> None:
    starlette = Starlette(
        routes=[
            Route("/ws/page", ok),
            WebSocketRoute("/chat/socket", ok),
            Mount("/rooms", routes=[WebSocketRoute("/{room}/ws", ok)]),
            Mount("/static", app=PlainTextResponse("files")),
        ]
    )
    assert loader.websocket_route_paths(CORSMiddleware(starlette)) == ["/chat/socket", "/rooms/{room}/ws"]
    stream = APIRouter(prefix="/api/v1/stream")

    @stream.websocket("/ws")
    async def feed() -> None: ...

    @stream.get("/ws/history")
    async def history() -> None: ...

    fastapi = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    fastapi.include_router(stream)
    assert loader.websocket_route_paths(fastapi) == ["/api/v1/stream/ws"]
    assert loader.route_paths(fastapi) == ["/api/v1/stream/ws", "/api/v1/stream/ws/history"]


def test_the_demos_websockets_are_all_under_the_default_websocket_paths() -> None:
    from service.app import app

    found = loader.websocket_route_paths(app)
    assert found and all(path.startswith("/ws/") for path in found)
    assert loader.unproxied_websockets(found, load_settings()) == []


def test_every_websocket_route_outside_nginx_websocket_paths_is_a_warning_naming_route_and_knob() -> None:
    routes = ["/ws/echo", "/ws", "/chat/socket", "/rooms/{room}/ws", "/{room}"]
    [chat, rooms, anywhere] = loader.unproxied_websockets(routes, load_settings())
    assert chat == (
        "its WebSocket route /chat/socket is not under NGINX_WEBSOCKET_PATHS=/ws/: nginx cuts it after "
        "NGINX_PROXY_READ_TIMEOUT=30s without a frame, not NGINX_WS_READ_TIMEOUT=75s, and rule 2 does not "
        "hold for it. Fix: add /chat/socket to NGINX_WEBSOCKET_PATHS"
    )
    assert rooms.startswith("its WebSocket route /rooms/{room}/ws is not under") and "add /rooms/ to" in rooms
    assert anywhere.endswith("Fix: serve it under a path prefix")
    covered = load_settings(nginx_websocket_paths="/ws/ /chat/socket /rooms/")
    assert loader.unproxied_websockets(routes[:-1], covered) == []
    narrow = load_settings(nginx_websocket_paths="/ws/ /rooms/lobby/")  # not every room
    assert [w.split()[3] for w in loader.unproxied_websockets(routes[3:4], narrow)] == ["/rooms/{room}/ws"]


def test_app_src_and_app_requirements_must_exist_where_they_are_read(tmp_path: Path) -> None:
    settings = load_settings(app_src=str(tmp_path / "src"), app_requirements=str(tmp_path / "req.txt"))
    assert [line.split(":")[0] for line in loader.source_problems(settings)] == [
        f"APP_SRC={tmp_path / 'src'}",
        f"APP_REQUIREMENTS={tmp_path / 'req.txt'}",
    ]
    (tmp_path / "src").mkdir()
    (tmp_path / "req.txt").write_text("fastapi\n")
    assert loader.source_problems(settings) == []


# --- the command line --------------------------------------------------------------------------------

LIFESPAN = """
import asyncio, time

async def app(scope, receive, send):
    if scope["type"] != "lifespan":
        return
    await receive()
    {startup}
    await send({{"type": "lifespan.startup.complete"}})
    await receive()
    await send({{"type": "lifespan.shutdown.complete"}})
"""


def cli(tmp_path: Path, spec: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.platform.loader", *args],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "APP_MODULE": spec, "APP_SRC": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_says_ok_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(LIFESPAN.format(startup="await asyncio.sleep(0)"))
    done = cli(tmp_path, "good:app", "--lifespan")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("APP_MODULE=good:app: an ASGI app (function), routes not listed")
    assert "lifespan startup and shutdown ok" in done.stdout


def test_the_cli_fails_with_the_line_first_and_the_traceback_after(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text("import pg_absent\n")
    done = cli(tmp_path, "shop:app")
    assert done.returncode == 1
    first, *rest = done.stderr.splitlines()
    assert first == (
        "APP_MODULE=shop:app: module shop does not import: ModuleNotFoundError: No module named 'pg_absent'"
    )
    assert rest[0] == "Traceback (most recent call last):"


@pytest.mark.parametrize(
    ("startup", "said"),
    [
        ("raise RuntimeError('no database')", "lifespan startup raised RuntimeError: no database"),
        ("await asyncio.sleep(30)", "lifespan startup did not finish within APP_STARTUP_TIMEOUT=1s"),
        (
            "time.sleep(30)",
            "lifespan did not finish within APP_STARTUP_TIMEOUT=1s (the event loop is blocked)",
        ),
    ],
)
def test_the_cli_runs_the_lifespan_within_app_startup_timeout(
    tmp_path: Path, startup: str, said: str
) -> None:
    (tmp_path / "slow.py").write_text(LIFESPAN.format(startup=startup))
    started = time.monotonic()
    done = cli(tmp_path, "slow:app", "--lifespan", APP_STARTUP_TIMEOUT="1")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == f"APP_MODULE=slow:app: {said}"
    assert time.monotonic() - started < 10


def test_the_cli_refuses_a_platform_path_the_app_serves(tmp_path: Path) -> None:
    (tmp_path / "own.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import Route\n"
        "from starlette.responses import PlainTextResponse\n"
        "app = Starlette(routes=[Route('/healthz', lambda request: PlainTextResponse('mine'))])\n"
    )
    done = cli(tmp_path, "own:app")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0].startswith("APP_MODULE=own:app: APP_LIVENESS_PATH=/healthz shadows")
    assert cli(tmp_path, "own:app", APP_LIVENESS_PATH="/livez").returncode == 0


def test_the_cli_warns_of_a_websocket_route_outside_nginx_websocket_paths(tmp_path: Path) -> None:
    (tmp_path / "chat.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import WebSocketRoute\n"
        "async def socket(websocket): ...\n"
        "routes = [WebSocketRoute('/chat/socket', socket), WebSocketRoute('/ws/echo', socket)]\n"
        "app = Starlette(routes=routes)\n"
    )
    done = cli(tmp_path, "chat:app")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: APP_MODULE=chat:app: its WebSocket route /chat/socket is not under "
        "NGINX_WEBSOCKET_PATHS=/ws/: nginx cuts it after NGINX_PROXY_READ_TIMEOUT=30s without a frame, not "
        "NGINX_WS_READ_TIMEOUT=75s, and rule 2 does not hold for it. Fix: add /chat/socket to "
        "NGINX_WEBSOCKET_PATHS"
    ]
    done = cli(tmp_path, "chat:app", NGINX_WEBSOCKET_PATHS="/ws/ /chat/")
    assert (done.returncode, done.stderr) == (0, "")


# --- a real gunicorn stops on an app that fails: no restart loop ------------------------------------


def gunicorn(tmp_path: Path, spec: str, **env: str) -> tuple[int, str]:
    metrics = tmp_path / "metrics"
    metrics.mkdir(exist_ok=True)
    knobs = {
        "PATH": os.environ["PATH"],
        "APP_MODULE": spec,
        "APP_SRC": str(tmp_path),
        "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"],
        cwd=ROOT,
        env=knobs,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"gunicorn kept running (a restart loop?):\n{output[-3000:]}")
    return process.returncode, output


@pytest.mark.parametrize(
    ("source", "exit_code", "said"),
    [
        ("import not_installed_anywhere\n", 4, "module bad does not import: ModuleNotFoundError"),
        (LIFESPAN.format(startup="raise RuntimeError('no database')"), 3,
         "lifespan startup raised RuntimeError: no database"),
        (LIFESPAN.format(startup="time.sleep(60)"), 3,
         "lifespan startup did not finish within APP_STARTUP_TIMEOUT=1s and the event loop is blocked"),
    ],
)  # fmt: skip
def test_gunicorn_stops_with_the_line_when_the_app_does_not_load_or_start(
    tmp_path: Path, source: str, exit_code: int, said: str
) -> None:
    (tmp_path / "bad.py").write_text(source)
    code, output = gunicorn(tmp_path, "bad:app", APP_STARTUP_TIMEOUT="1")
    # When both workers fail at once, gunicorn's halt reaps the second one, raises HaltServer again from
    # inside itself and exits 1 with that traceback (a known gunicorn race, e.g. CTFd/CTFd#637): stopped all
    # the same.
    assert code in (exit_code, 1), output[-3000:]
    assert f"APP_MODULE=bad:app: {said}" in output
    assert output.count("Booting worker") <= 2, "workers were booted again"
