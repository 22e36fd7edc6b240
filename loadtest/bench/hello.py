"""The bare row of `make bench`: the smallest FastAPI app, what a server costs with nothing of ours in it.

gunicorn -k uvicorn_worker.UvicornWorker -w 2 loadtest.bench.hello:app
"""

import os
from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.get("/api/ping")
async def ping() -> dict[str, Any]:
    return {"pong": True, "pid": os.getpid()}
