"""Every error a client can see is one JSON shape, naming the layer that answered: `ErrorBody`.

The demo app builds its errors from these models; the platform (service/platform/errors.py: 504, 503,
405), nginx (deploy/nginx/nginx.conf.template) and uvicorn (service/platform/worker.py) write the same shape
by hand, and tests/stack/test_contract.py holds them all to it.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any, Literal

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("service.error")


class Layer(StrEnum):
    """Who answered: the app, uvicorn (before the app sees the request) or nginx (before uvicorn does)."""

    app = "app"
    uvicorn = "uvicorn"
    nginx = "nginx"


class Problem(BaseModel):
    """One thing wrong with a request."""

    model_config = ConfigDict(extra="forbid")

    location: str = Field(description="Where, dotted: `query.delay`, `body.text`, `body`.")
    message: str
    type: str = Field(description="pydantic's error type: `missing`, `json_invalid`, `less_than_equal`, ...")


class ErrorBody(BaseModel):
    """The body of every error, whichever layer sends it."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(description="The HTTP status, again.")
    error: str = Field(description="A stable code for the cause: `not_found`, `rate_limited`, ...")
    detail: str | list[Problem]
    layer: Layer
    request_id: str | None = Field(
        None,
        description="The request's X-Request-ID (the client's, or nginx's own). Null when nothing set one "
        "(the app without nginx); absent from uvicorn's 503, sent before the request is read — the "
        "X-Request-ID response header still carries it.",
    )


class InvalidRequest(ErrorBody):
    """A 422: what is wrong with the query or the body, one problem each."""

    status: Literal[422]
    error: Literal["invalid_request"]
    detail: list[Problem]
    layer: Literal[Layer.app]


def error_body(status: int, error: str, detail: Any, request_id: str | None = None) -> dict[str, Any]:
    body = ErrorBody(status=status, error=error, detail=detail, layer=Layer.app, request_id=request_id)
    return body.model_dump(mode="json")


def error_response(request: Request, status: int, error: str, detail: Any) -> JSONResponse:
    request_id = request.headers.get("x-request-id")
    return JSONResponse(error_body(status, error, detail, request_id), status_code=status)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    response = error_response(request, exc.status_code, error, exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 422, "invalid_request", problems_of(exc.errors()))


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    response = error_response(request, 500, "internal_error", "the app failed; see its log")
    # Starlette re-raises after sending this, and uvicorn then closes the connection. Without the header
    # nginx pools that connection and may send the next POST on it as it closes: a 502 it does not retry.
    response.headers["connection"] = "close"
    return response


def problems_of(errors: Any) -> list[Problem]:
    return [
        Problem(location=".".join(str(part) for part in e["loc"]), message=e["msg"], type=e["type"])
        for e in errors
    ]


async def deny_websocket(websocket: WebSocket, status: int, error: str, detail: Any) -> None:
    """Refuses a WebSocket handshake with a JSON error response (the ASGI WebSocket Denial Response, which
    uvicorn supports); a server without it gets a close before accept, which it answers with a bare 403."""
    if "websocket.http.response" not in websocket.scope.get("extensions", {}):
        await websocket.close(code=1008)
        return
    body = error_body(status, error, detail, websocket.headers.get("x-request-id"))
    await websocket.send_denial_response(JSONResponse(body, status_code=status))


async def websocket_validation_error(websocket: WebSocket, exc: Exception) -> None:
    assert isinstance(exc, WebSocketRequestValidationError)
    await deny_websocket(websocket, 422, "invalid_request", problems_of(exc.errors()))


def deny_websockets_without_route(not_found: ASGIApp) -> ASGIApp:
    """The router's default for a path no route matches: for a WebSocket handshake a JSON 404 instead of
    Starlette's close before accept (a bare 403 from uvicorn); HTTP requests as before."""

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await not_found(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        await deny_websocket(websocket, 404, "not_found", f"no WebSocket route at {scope['path']}")

    return default


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(WebSocketRequestValidationError, websocket_validation_error)
    app.add_exception_handler(Exception, unhandled_error)
    app.router.default = deny_websockets_without_route(app.router.default)
