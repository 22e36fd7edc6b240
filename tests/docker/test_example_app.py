"""The example app (examples/chat) on the docker runtime, as `make up RUNTIME=docker APP_MODULE=main:app
APP_SRC=examples/chat APP_REQUIREMENTS=examples/chat/requirements.txt` runs it: its own image, built from a
context staged under the run dir with its requirements beside the platform's pins (its FastAPI, not the
demo's; in CI offline, from the wheelhouse), loaded and started in that image before anything runs, and
served through nginx: GET /, POST /message, the WebSocket.

One build of the example, reused: the stack's, then the refusals at the end (cached layers; the last app
differs from the example in its code only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from websocket import create_connection

from deploy.stackctl import stack as stackctl
from deploy.stackctl.config import ROOT
from deploy.stackctl.ports import free_port_knobs, port_in_use
from deploy.stackctl.requirements import platform_pins
from tests.support.docker import (
    BUILD_TIMEOUT,
    DockerStack,
    docker,
    free_subnet,
    require_engine,
    stack_environment,
)

# The first test builds the image (and, offline, downloads the example's wheels).
pytestmark = [pytest.mark.docker, pytest.mark.timeout(BUILD_TIMEOUT)]

EXAMPLE = {
    "APP_MODULE": "main:app",
    "APP_SRC": "examples/chat",
    "APP_REQUIREMENTS": "examples/chat/requirements.txt",
}


def pinned(name: str) -> str:
    text = (ROOT / EXAMPLE["APP_REQUIREMENTS"]).read_text()
    return next(line.split("==")[1] for line in text.splitlines() if line.startswith(f"{name}=="))


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerStack]:
    require_engine()
    stack = DockerStack({**stack_environment(), **EXAMPLE})
    try:
        stack.handle = stackctl.start("docker", run_dir=tmp_path_factory.mktemp("chat"), base=stack.env)
        yield stack
    finally:
        stack.compose("down", "--remove-orphans", "--timeout", "5")


def app_container(stack: DockerStack) -> dict[str, Any]:
    apps = stack.containers("app")
    assert len(apps) == 1
    return apps[0]


def test_the_example_runs_in_an_image_of_its_own_non_root_and_read_only(chat: DockerStack) -> None:
    assert chat.handle is not None
    app = app_container(chat)
    tag = app["Config"]["Image"]
    assert tag.startswith("blueprint-app:chat-"), tag  # not the demo's blueprint-app:local
    assert app["Config"]["User"] == "10001:10001"
    assert app["HostConfig"]["ReadonlyRootfs"] is True
    assert app["State"]["Health"]["Status"] == "healthy"
    assert app["Config"]["StopSignal"] == "SIGTERM"
    env = dict(item.split("=", 1) for item in app["Config"]["Env"])
    assert env["APP_MODULE"] == "main:app"
    versions = chat.exec(
        app, "python3", "-c", "import fastapi, starlette; print(fastapi.__version__, starlette.__version__)"
    )
    assert versions.stdout.split() == [pinned("fastapi"), pinned("starlette")], versions.stderr
    # The pre-flight ran in this image before anything started, and said so in the run dir.
    log = (chat.handle.run_dir / "preflight.log").read_text()
    assert f"in image {tag}: exit 0" in log and "APP_MODULE=main:app: an ASGI app (FastAPI)" in log


def test_root_and_post_message_through_nginx(chat: DockerStack) -> None:
    root = httpx2.get(f"{chat.url}/", timeout=10)
    assert root.status_code == 200
    assert root.json() == {"message": "Hello World", "app": "chat example", "fastapi": pinned("fastapi")}
    posted = httpx2.post(
        f"{chat.url}/message", json={"author": "ada", "text": "hello from docker"}, timeout=10
    )
    assert posted.status_code == 201, posted.text
    assert posted.json()["words"] == 3 and posted.json()["author"] == "ada"
    assert posted.headers["x-request-id"]  # the platform's, around the example
    bad = httpx2.post(f"{chat.url}/message", json={"text": "no author"}, timeout=10)
    assert bad.status_code == 422
    assert httpx2.get(f"{chat.url}/readyz", timeout=10).json()["status"] == "ready"


def test_the_websocket_echoes_through_nginx(chat: DockerStack) -> None:
    socket = create_connection(f"{chat.ws_url}/ws", timeout=10)
    try:
        for text in ("one", "two", json.dumps({"seq": 3})):
            socket.send(text)
            assert socket.recv() == text
    finally:
        socket.close()


def test_the_example_routes_are_counted_by_template(chat: DockerStack) -> None:
    httpx2.post(f"{chat.url}/message", json={"author": "ada", "text": "counted"}, timeout=10)
    scrape = chat.exec(
        app_container(chat),
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())",
    )
    assert scrape.returncode == 0, scrape.stderr
    assert 'route="/message",status="201"' in scrape.stdout


def refused(stack: DockerStack, run_dir: Path, command: str) -> str:
    result = stack.stackctl("--run-dir", str(run_dir), command, timeout=BUILD_TIMEOUT)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_bad_app_module_is_refused_by_check_and_up_in_the_image(chat: DockerStack, tmp_path: Path) -> None:
    # Another project on other ports: nothing of the running example is touched, nothing of this one starts.
    env = {**chat.env, "APP_MODULE": "main:application", **free_port_knobs("docker")}
    env["COMPOSE_PROJECT_NAME"] = f"{chat.project}-bad"
    bad = DockerStack(env)
    for command in ("check", "up"):
        line = refused(bad, tmp_path, command)
        assert (
            line
            == f"stackctl {command}: APP_MODULE=main:application: module main has no attribute application"
        )
        label = f"label=com.docker.compose.project={bad.project}"
        assert docker("ps", "-aq", "--filter", label, env=env).stdout.split() == []
    assert "in image blueprint-app:chat-" in (tmp_path / "preflight.log").read_text()
    assert app_container(chat)["State"]["Health"]["Status"] == "healthy"


def test_check_loads_the_example_and_checks_gunicorns_config_in_its_image(
    chat: DockerStack, tmp_path: Path
) -> None:
    result = chat.stackctl("--run-dir", str(tmp_path), "check", timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = "ok python -m service.platform.loader --lifespan: APP_MODULE=main:app: an ASGI app (FastAPI)"
    assert loaded in result.stdout
    assert "with the rendered env in image blueprint-app:chat-" in result.stdout


def test_a_requirement_against_the_platform_pins_is_refused_in_one_line(
    chat: DockerStack, tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"fastapi=={pinned('fastapi')}\nprometheus-client==0.19.0\n")
    env = {**chat.env, "APP_REQUIREMENTS": str(requirements), **free_port_knobs("docker")}
    env["COMPOSE_PROJECT_NAME"] = f"{chat.project}-conflict"
    line = refused(DockerStack(env), tmp_path / "run", "up")
    platform = next(pin for pin in platform_pins() if pin.startswith("prometheus-client=="))
    assert line == (
        f"stackctl up: APP_REQUIREMENTS={requirements}: prometheus-client==0.19.0 conflicts with the "
        f"platform's {platform} (pyproject.toml `dependencies`)"
    )
    label = f"label=com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"
    assert docker("ps", "-aq", "--filter", label, env=env).stdout.split() == []


GUNICORN_ONLY = """
import sys
from contextlib import asynccontextmanager

from starlette.applications import Starlette


@asynccontextmanager
async def lifespan(app):
    if "gunicorn" in sys.modules:  # passes the pre-flight in the image, fails in every worker
        raise RuntimeError("no database under gunicorn")
    yield


app = Starlette(lifespan=lifespan)
"""


def test_a_startup_failing_only_under_gunicorn_stops_up_without_a_restart_loop(
    chat: DockerStack, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "gonly.py").write_text(GUNICORN_ONLY)
    # The example's requirements: the image reuses the example's installed layer, only the code differs.
    env = {**chat.env, "APP_MODULE": "gonly:app", "APP_SRC": str(src), **free_port_knobs("docker")}
    env["COMPOSE_PROJECT_NAME"] = f"{chat.project}-gonly"
    env["COMPOSE_SUBNET"] = free_subnet()
    bad = DockerStack(env)
    try:
        line = refused(bad, tmp_path / "run", "up")
        expected = "APP_MODULE=gonly:app: lifespan startup raised RuntimeError: no database under gunicorn"
        assert line.startswith(f"stackctl up: {expected} (gunicorn halted in "), line
        # Stopped, not restarting: kept (exited) for `make logs`, nothing of it runs or listens.
        time.sleep(3)
        label = f"label=com.docker.compose.project={bad.project}"
        assert docker("ps", "-q", "--filter", label, env=env).stdout.split() == []
        assert not port_in_use("127.0.0.1", int(env["HTTP_PORT"]))
    finally:
        bad.compose("down", "--remove-orphans", "--timeout", "5")
