"""The app's own environment and the pre-flight on the real local stack, with apps these tests write:

- an app pinned to another FastAPI minor than the demo's gets a virtualenv of its own, built by pip from its
  requirements file beside the platform's pins (cached under .run/venvs/ by their hash: only the first run
  downloads), and is served through nginx, its routes counted in the platform's metrics;
- a requirement that contradicts the platform's pins, and every kind of bad APP_MODULE, stop `stackctl up`
  and `stackctl check` (what `make up` and `make check` run) with one line, exit 1, nothing left running;
- a startup that fails only under gunicorn (after the pre-flight passed) stops `up` with the worker's line.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import httpx2
import psutil
import pytest
import websocket

from deploy.pins import pinned_requirements
from deploy.stackctl import appenv
from deploy.stackctl.ports import bind_in_use
from deploy.stackctl.requirements import platform_pins
from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack

# Another FastAPI minor than the demo's (checked below), with the Starlette it supports.
OWN_REQUIREMENTS = "fastapi==0.115.6\nstarlette==0.41.3\n"
SHOP = """
import fastapi
from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict:
    return {"item": item_id, "fastapi": fastapi.__version__}


@app.websocket("/ws")
async def echo(websocket: fastapi.WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()
"""


def write_app(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def pin_of(name: str, pins: list[str]) -> str:
    return next(pin for pin in pins if pin.split("[")[0].split("==")[0] == name)


def test_an_app_on_its_own_fastapi_runs_in_its_own_virtualenv_behind_nginx(tmp_path: Path) -> None:
    demo_fastapi = pin_of("fastapi", pinned_requirements(["demo"])).split("==")[1]
    assert minor("0.115.6") != minor(demo_fastapi)
    src = write_app(tmp_path / "src", {"shop.py": SHOP, "requirements.txt": OWN_REQUIREMENTS})
    stack = make_stack(
        tmp_path / "run",
        APP_MODULE="shop:app",
        APP_SRC=str(src),
        APP_REQUIREMENTS=str(src / "requirements.txt"),
        WEB_CONCURRENCY="1",
        OFFLINE="0",  # from PyPI: CI's engine environment sets OFFLINE=1 for its image builds
    )
    with running(stack):
        assert stack.handle is not None
        answer = httpx2.get(f"{stack.url}/items/7", timeout=10)
        assert answer.json() == {"item": 7, "fastapi": "0.115.6"}
        assert httpx2.get(f"{stack.url}/readyz").json()["status"] == "ready"
        ws = websocket.create_connection(f"{stack.ws_url}/ws", timeout=10)  # /ws itself, not only /ws/...
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.close()
        text = httpx2.get(f"{stack.status_url}/metrics").text
        assert 'app_requests_total{method="GET",route="/items/{item_id}",status="200"} 1.0' in text

        # gunicorn runs with the app's virtualenv, keyed by what it installs, not the tooling one
        master = psutil.Process(stack.handle.pids()["gunicorn"])
        venv = appenv.VENVS / master.cmdline()[0].split("/.run/venvs/")[1].split("/")[0]
        assert master.cmdline()[0] == str(venv / "bin" / "python")
        assert venv.name.startswith("app-")
        assert venv == appenv.app_venv(stack.handle.settings).path  # type: ignore[union-attr]


def assert_nothing_left(stack: Stack) -> None:
    """No process of the stack, no port or state it took (no container: the local runtime has none)."""
    run_dir = str(stack.run_dir.resolve())
    mine = [
        process.info["pid"]
        for process in psutil.process_iter(["pid", "cmdline"])
        if any(run_dir in part for part in process.info["cmdline"] or ())
    ]
    assert not mine, f"processes of {run_dir} still run: {mine}"
    for knob in ("HTTP_PORT", "NGINX_STATUS_PORT"):
        assert not bind_in_use(f"127.0.0.1:{stack.env[knob]}"), knob
    assert not bind_in_use(stack.env["GUNICORN_BIND"])
    assert not (stack.run_dir / "state.json").exists()


def one_line(output: str, command: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"stackctl {command}: "), output
    return lines[0].removeprefix(f"stackctl {command}: ")


@pytest.mark.parametrize(
    ("requirement", "platform_side"),
    [
        ("prometheus-client==0.19.0", "prometheus-client"),  # against one of the platform's own pins
        ("pydantic==1.10.13", "pydantic-settings"),  # against what one of its pins needs
    ],
)
def test_a_requirement_against_the_platform_pins_is_refused_in_one_line(
    tmp_path: Path, requirement: str, platform_side: str
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# the app's own\n{requirement}\n")
    stack = make_stack(
        tmp_path / "run", APP_MODULE="shop:app", APP_REQUIREMENTS=str(requirements), OFFLINE="0"
    )
    # pip backtracks for a while over the second case: `check` and `up` share the code, `up` is enough.
    for command in ("check", "up") if platform_side == "prometheus-client" else ("up",):
        result = stack.stackctl(command)
        assert result.returncode == 1, result.stdout + result.stderr
        line = one_line(result.stderr, command)
        assert line.startswith(
            f"APP_REQUIREMENTS={requirements}: {requirement} conflicts with the platform's "
        )
        assert pin_of(platform_side, platform_pins()) in line
        assert_nothing_left(stack)
    assert not list(appenv.VENVS.glob(".building-*")), "a failed build left its scratch virtualenv"


BAD_APPS = {
    "does not import": (
        "broken:app",
        {"broken.py": "import a_module_nobody_installed\napp = None\n"},
        "module broken does not import: ModuleNotFoundError: No module named 'a_module_nobody_installed'",
    ),
    "missing attribute": ("plain:application", {"plain.py": "app = None\n"}, "has no attribute application"),
    "not an ASGI app": (
        "wsgi:app",
        {"wsgi.py": "def app(environ, start_response):\n    return []\n"},
        "not an ASGI app: app is a synchronous callable of two arguments, a WSGI app",
    ),
    "startup raises": (
        "raising:app",
        {
            "raising.py": """
            async def app(scope, receive, send):
                if scope["type"] == "lifespan":
                    await receive()
                    raise RuntimeError("the database is unreachable")
            """
        },
        "lifespan startup raised RuntimeError: the database is unreachable",
    ),
    "startup too slow": (
        "slow:app",
        {
            "slow.py": """
            import asyncio

            async def app(scope, receive, send):
                if scope["type"] == "lifespan":
                    await receive()
                    await asyncio.sleep(60)
            """
        },
        "lifespan startup did not finish within APP_STARTUP_TIMEOUT=1s",
    ),
    "shadowed route": (
        "health:app",
        {
            "health.py": """
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            app = Starlette(routes=[Route("/healthz", lambda request: PlainTextResponse("mine"))])
            """
        },
        "APP_LIVENESS_PATH=/healthz shadows the app's route /healthz",
    ),
}


@pytest.mark.parametrize("case", list(BAD_APPS))
def test_a_bad_app_module_is_refused_by_check_and_up_in_one_line(tmp_path: Path, case: str) -> None:
    spec, files, said = BAD_APPS[case]
    src = write_app(tmp_path / "src", files)
    stack = make_stack(tmp_path / "run", APP_MODULE=spec, APP_SRC=str(src), APP_STARTUP_TIMEOUT="1")
    for command in ("check", "up"):
        result = stack.stackctl(command)
        assert result.returncode == 1, result.stdout + result.stderr
        line = one_line(result.stderr, command)
        assert line.startswith(f"APP_MODULE={spec}: ") and said in line, line
        if "Traceback" in (stack.run_dir / "preflight.log").read_text():
            assert line.endswith(f"; traceback in {stack.run_dir.resolve() / 'preflight.log'}")
        assert_nothing_left(stack)


GUNICORN_ONLY = """
import sys
from contextlib import asynccontextmanager

from starlette.applications import Starlette


@asynccontextmanager
async def lifespan(app):
    if "gunicorn" in sys.modules:  # passes the pre-flight, fails in every worker
        raise RuntimeError("no database under gunicorn")
    yield


app = Starlette(lifespan=lifespan)
"""


def test_a_startup_that_fails_only_under_gunicorn_stops_up_with_the_workers_line(tmp_path: Path) -> None:
    src = write_app(tmp_path / "src", {"gonly.py": GUNICORN_ONLY})
    stack = make_stack(tmp_path / "run", APP_MODULE="gonly:app", APP_SRC=str(src), WEB_CONCURRENCY="2")
    result = stack.stackctl("up")
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_line(result.stderr, "up")
    log = stack.run_dir.resolve() / "gunicorn.log"
    expected = "APP_MODULE=gonly:app: lifespan startup raised RuntimeError: no database under gunicorn"
    # exit 3 is gunicorn's halt on a worker's boot error; 1 when the second worker fails while the master is
    # halting for the first: its stop() reaps it and raises HaltServer again, out of halt() (gunicorn 27)
    stopped = rf"{re.escape(expected)} \(gunicorn stopped, exit [13]; see {re.escape(str(log))}\)"
    assert re.match(stopped, line), line
    assert "Traceback" in log.read_text()
    assert_nothing_left(stack)


def test_the_pre_flight_says_what_it_loaded_and_where(tmp_path: Path) -> None:
    result = make_stack(tmp_path).stackctl("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok python -m service.platform.loader --lifespan: APP_MODULE=service.app:app: an ASGI app" in (
        result.stdout
    )
    assert "(in the tooling virtualenv)" in result.stdout
