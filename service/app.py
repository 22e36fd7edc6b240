"""The ASGI app: `service.app:app` for gunicorn, `create_app(settings)` for tests."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from service import metrics, routes, schema
from service.errors import install_error_handlers
from service.middleware import RequestContextMiddleware
from service.settings import Settings, load_settings


def configure_logging(level: str) -> None:
    logger = logging.getLogger("service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.app_log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.app_threadpool_tokens
        metrics.WORKERS.set(1)
        yield

    app = FastAPI(
        title="FastAPI deployment blueprint",
        description=schema.DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings  # what the routes' `app_settings` dependency reads
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        request_timeout=settings.app_request_timeout,
        access_log=bool(settings.app_access_log),
    )
    for router in routes.ROUTERS:
        # The error bodies are the handlers' above (and nginx's, uvicorn's), not FastAPI's.
        app.include_router(router, responses=schema.ERRORS)

    def openapi() -> dict[str, Any]:
        # FastAPI caches the schema; both steps are no-ops the second time (the limits' markers are gone).
        return schema.contract(routes.document_limits(FastAPI.openapi(app), settings))

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
