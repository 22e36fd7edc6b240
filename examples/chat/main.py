"""A small FastAPI app of the kind the FastAPI tutorial builds, written without the blueprint in mind.

    uvicorn main:app --reload                      # on your laptop, from this directory
    make up APP_MODULE=main:app APP_SRC=examples/chat APP_REQUIREMENTS=examples/chat/requirements.txt

It pins its own FastAPI (requirements.txt), imports nothing of the blueprint, and has no /healthz, /readyz or
/metrics of its own: the platform answers those paths before a request reaches it. It keeps no state in the
process that another worker would need: each gunicorn worker is a separate process with its own copy.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import fastapi
from fastapi import FastAPI, Query, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

MAX_DELAY_S = 10.0  # below the blueprint's APP_REQUEST_TIMEOUT (15 s), so /slow never meets the deadline


class Message(BaseModel):
    author: str = Field(min_length=1, max_length=40, examples=["ada"])
    text: str = Field(min_length=1, max_length=2000, examples=["Hello from the tutorial"])


class Posted(Message):
    id: str
    words: int
    received_at: datetime


class Slept(BaseModel):
    slept_s: float


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Startup must finish quickly (the platform waits APP_STARTUP_TIMEOUT for it): open pools, read
    # config; never a long migration or a blocking call here.
    app.state.started = time.time()
    yield


def create_app() -> FastAPI:
    """The factory, for APP_MODULE=main:create_app(); `app` below is the same app built once."""
    app = FastAPI(title="chat example", version="1.0.0", lifespan=lifespan)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"message": "Hello World", "app": "chat example", "fastapi": fastapi.__version__}

    @app.post("/message", status_code=201)
    async def post_message(message: Message) -> Posted:
        # Nothing is stored: a list in this process would be seen by one worker only (see the docstring).
        return Posted(
            **message.model_dump(),
            id=uuid.uuid4().hex,
            words=len(message.text.split()),
            received_at=datetime.now(UTC),
        )

    @app.get("/slow")
    async def slow(delay: Annotated[float, Query(ge=0, le=MAX_DELAY_S)] = 0.1) -> Slept:
        # Awaiting lets this worker serve every other request meanwhile; time.sleep() here would stall them.
        await asyncio.sleep(delay)
        return Slept(slept_s=delay)

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    return app


app = create_app()
