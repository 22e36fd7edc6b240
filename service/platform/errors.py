"""The error bodies the platform sends, in the blueprint's one JSON shape (service/errors.py `ErrorBody`:
status, error, detail, layer, request_id), written by hand: the platform imports no pydantic model."""

from __future__ import annotations

import json
from typing import Any

from service.platform.types import Send

REQUEST_ID = b"x-request-id"
CONNECTION_CLOSE = (b"connection", b"close")


def error_body(status: int, error: str, detail: str, request_id: str | None = None) -> dict[str, Any]:
    """An error the platform answers inside the app's process: its layer is `app`."""
    return {"status": status, "error": error, "detail": detail, "layer": "app", "request_id": request_id}


async def send_json(
    send: Send,
    status: int,
    body: object,
    headers: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head_only else payload})
