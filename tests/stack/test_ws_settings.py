"""UVICORN_WS_* knobs reach uvicorn through our worker class: seen in the real handshake through nginx."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from deploy.stackctl import stack
from deploy.stackctl.ports import free_port_knobs

pytestmark = pytest.mark.stack

HANDSHAKE = (
    "GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
)


def handshake_answer(handle: stack.Handle) -> str:
    with socket.create_connection(("127.0.0.1", handle.settings.http_port), timeout=5) as client:
        client.sendall(HANDSHAKE.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode("latin-1").lower()


def test_per_message_deflate_follows_its_knob(tmp_path: Path) -> None:
    knobs = {**free_port_knobs("local"), "WEB_CONCURRENCY": "1", "GUNICORN_LOG_LEVEL": "warning"}
    with stack.running("local", knobs, tmp_path / "run", base={}) as handle:
        offered = handshake_answer(handle)
        assert offered.startswith("http/1.1 101") and "permessage-deflate" in offered
        handle = handle.reload(UVICORN_WS_PER_MESSAGE_DEFLATE="0")
        refused = handshake_answer(handle)
        assert refused.startswith("http/1.1 101") and "permessage-deflate" not in refused
