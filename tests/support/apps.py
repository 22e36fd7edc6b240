"""The apps the lifecycle tests run their stacks with: the demo, and an app the tests write themselves (not
the demo, nothing of the blueprint imported), served through APP_MODULE/APP_SRC. Each names the routes the
tests use: a POST that answers JSON with the worker's pid, and a WebSocket that echoes text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# A FastAPI app as a user writes one: a body model, a 201, a WebSocket at /ws (not under the demo's /ws/).
ORDERS = """
import os

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel


class Order(BaseModel):
    item: str
    quantity: int


app = FastAPI(title="orders")


@app.post("/orders", status_code=201)
async def place(order: Order) -> dict[str, object]:
    return {"item": order.item, "quantity": order.quantity, "pid": os.getpid()}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
"""


@dataclass(frozen=True)
class App:
    name: str
    post: str  # answers JSON with "pid": the worker's
    body: str
    created: str  # the POST's success status
    ws: str  # echoes text
    knobs: dict[str, str] = field(default_factory=dict)  # APP_MODULE, APP_SRC


DEMO = App("demo", "/api/echo", '{"text": "nothing lost"}', "200", "/ws/echo")
APPS = ("demo", "own")


def own_app(directory: Path) -> App:
    """The tests' own app, written into `directory` (its APP_SRC)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "orders.py").write_text(ORDERS)
    knobs = {"APP_MODULE": "orders:app", "APP_SRC": str(directory)}
    return App("own", "/orders", '{"item": "tea", "quantity": 2}', "201", "/ws", knobs)


def app_named(name: str, directory: Path) -> App:
    return DEMO if name == "demo" else own_app(directory)
