"""Run inside the chat example's own virtualenv (not the tooling one): `python -I chat_probe.py APP_DIR`.
Drives the app in process (TestClient, httpx's ASGI transport) and prints what it saw as one JSON object;
tests/examples/test_chat_app.py judges it. Standard library + the example's requirements + httpx only."""

import asyncio
import json
import sys
import time

sys.path.insert(0, sys.argv[1])

import fastapi
import httpx
import main
import pydantic
import starlette
from fastapi.testclient import TestClient


async def concurrent_slow(n: int, delay: float) -> float:
    """Seconds for n requests of /slow?delay= at once on one event loop."""
    transport = httpx.ASGITransport(app=main.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.get("/slow", params={"delay": delay}) for _ in range(n)))
        elapsed = time.perf_counter() - started
    assert all(answer.status_code == 200 for answer in answers)
    return elapsed


def main_probe() -> dict[str, object]:
    seen: dict[str, object] = {
        "versions": {"fastapi": fastapi.__version__, "starlette": starlette.__version__},
        "pydantic": pydantic.VERSION,
        "route_paths": sorted(getattr(route, "path", "") for route in main.app.routes),
        "factory_is_fastapi": isinstance(main.create_app(), fastapi.FastAPI),
    }
    started = time.perf_counter()
    with TestClient(main.app) as client:
        seen["lifespan_startup_s"] = time.perf_counter() - started
        seen["root"] = client.get("/").json()
        posted = client.post("/message", json={"author": "ada", "text": "hello from the probe"})
        seen["post"] = {"status": posted.status_code, "body": posted.json()}
        bad = client.post("/message", json={"author": "", "text": "x"})
        seen["post_bad"] = {"status": bad.status_code, "body": bad.json()}
        seen["slow"] = client.get("/slow", params={"delay": 0.05}).json()
        seen["slow_too_long"] = client.get("/slow", params={"delay": 60}).status_code
        with client.websocket_connect("/ws") as ws:
            echoes = []
            for text in ("one", "two", '{"seq": 3}'):
                ws.send_text(text)
                echoes.append(ws.receive_text())
        seen["ws_echoes"] = echoes
    seen["ten_slow_at_once_s"] = asyncio.run(concurrent_slow(10, 0.3))
    return seen


if __name__ == "__main__":
    print(json.dumps(main_probe(), default=str))
