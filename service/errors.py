"""Every error a client can see from the app is one JSON shape, naming the layer that answered."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("service.error")


def error_body(status: int, error: str, detail: Any, request_id: str | None = None) -> dict[str, Any]:
    return {"status": status, "error": error, "detail": detail, "layer": "app", "request_id": request_id}


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
    problems = [
        {"location": ".".join(str(part) for part in e["loc"]), "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    return error_response(request, 422, "invalid_request", problems)


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal_error", "the app failed; see its log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unhandled_error)
