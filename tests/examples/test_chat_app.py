"""The chat example (examples/chat) under its OWN FastAPI: a virtualenv built from its requirements.txt, not
the tooling venv (whose FastAPI is the demo's 0.165). The venv is cached under .run/venvs/ by the hash of
what it installs (deploy/stackctl/appenv.py), so only the first run (or a changed requirements file)
downloads anything.

In process only (TestClient, in chat_probe.py): the routes, the validation, the WebSocket echo, a quick
lifespan, and that /slow awaits instead of blocking. Serving it through nginx with `make up APP_MODULE=...`
belongs to the deployment tests of the platform layer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.stackctl.appenv import cached_venv
from deploy.stackctl.config import ROOT
from deploy.stackctl.errors import StackError

APP_DIR = ROOT / "examples" / "chat"
REQUIREMENTS = APP_DIR / "requirements.txt"
PROBE = Path(__file__).with_name("chat_probe.py")
# What the probe needs beyond the app: TestClient runs on httpx (starlette 0.52 supports < 0.29).
PROBE_REQUIREMENTS = ("httpx==0.28.1",)
PLATFORM_PATHS = {"/healthz", "/readyz", "/metrics"}


def example_python() -> Path:
    """The example's virtualenv, built once per requirements hash (deploy/stackctl/appenv.py, as the local
    runtime builds an app's)."""
    try:
        return cached_venv("chat", REQUIREMENTS, PROBE_REQUIREMENTS, str(REQUIREMENTS)).ensure()
    except StackError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    python = example_python()
    # -I: nothing of this repository or the tooling venv on the path; the probe adds the app's directory.
    probe = subprocess.run(
        [str(python), "-I", str(PROBE), str(APP_DIR)], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    result: dict[str, Any] = json.loads(probe.stdout)
    return result


def pinned(name: str) -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{REQUIREMENTS} pins no {name}")


def demo_pin(name: str) -> str:
    from deploy.pins import pinned_requirements

    return next(r.split("==", 1)[1] for r in pinned_requirements(["demo"]) if r.startswith(f"{name}=="))


def test_runs_on_its_own_fastapi_minor_not_the_demos(seen: dict[str, Any]) -> None:
    assert seen["versions"] == {"fastapi": pinned("fastapi"), "starlette": pinned("starlette")}
    minor = ".".join(pinned("fastapi").split(".")[:2])
    assert minor != ".".join(demo_pin("fastapi").split(".")[:2])
    assert seen["root"] == {"message": "Hello World", "app": "chat example", "fastapi": pinned("fastapi")}


def test_post_message_validates_its_body_model(seen: dict[str, Any]) -> None:
    post = seen["post"]
    assert post["status"] == 201
    assert post["body"]["author"] == "ada" and post["body"]["words"] == 4 and len(post["body"]["id"]) == 32
    bad = seen["post_bad"]
    assert bad["status"] == 422
    assert [error["loc"] for error in bad["body"]["detail"]] == [["body", "author"]]


def test_slow_awaits_so_requests_overlap_on_one_loop(seen: dict[str, Any]) -> None:
    assert seen["slow"] == {"slept_s": 0.05}
    assert seen["slow_too_long"] == 422
    # Ten 0.3 s requests at once take about 0.3 s when the handler awaits, 3 s when it blocks.
    assert seen["ten_slow_at_once_s"] < 1.5, seen["ten_slow_at_once_s"]


def test_websocket_echoes_and_lifespan_is_quick(seen: dict[str, Any]) -> None:
    assert seen["ws_echoes"] == ["one", "two", '{"seq": 3}']
    assert seen["lifespan_startup_s"] < 2.0


def test_leaves_the_platform_paths_to_the_platform(seen: dict[str, Any]) -> None:
    assert {"/", "/message", "/slow", "/ws"} <= set(seen["route_paths"])
    assert not PLATFORM_PATHS & set(seen["route_paths"])
    assert seen["factory_is_fastapi"] is True
