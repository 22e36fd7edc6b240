"""The demo app: `service.app:app`, the default APP_MODULE; `create_app(settings)` for tests.

It is one app among others: request ids, metrics, the deadline, liveness, readiness and the worker's
tuning come from the platform around it (service/platform/), not from here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.telemetry import TelemetryConfig
from starlette.routing import WebSocketRoute

from service import docs, routes, schema
from service.errors import install_error_handlers
from service.rooms import routes as rooms
from service.settings import Settings, load_settings

NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
# The demo's routers (service/routes.py) and the rooms' (service/rooms/routes.py), in the document's order.
ROUTERS = (*routes.ROUTERS, rooms.router)


def add_flat(app: FastAPI, router: APIRouter, responses: dict[int | str, dict[str, Any]]) -> None:
    """What `app.include_router(router, responses=responses)` does, with the routes registered on the app
    itself. FastAPI >= 0.137 keeps an included router as one node that it resolves on every request (in
    `fastapi/routing.py`, `_IncludedRouter`): ~90 k of 621 k instructions per request here
    (docs/PERFORMANCE.md). The OpenAPI document is the same (tests/service/test_app.py)."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            app.router.add_api_route(
                route.path,
                route.endpoint,
                response_model=route.response_model,
                status_code=route.status_code,
                tags=route.tags,
                dependencies=route.dependencies,
                summary=route.summary,
                description=route.description,
                response_description=route.response_description,
                responses={**responses, **route.responses},
                deprecated=route.deprecated,
                methods=route.methods,
                operation_id=route.operation_id,
                response_model_include=route.response_model_include,
                response_model_exclude=route.response_model_exclude,
                response_model_by_alias=route.response_model_by_alias,
                response_model_exclude_unset=route.response_model_exclude_unset,
                response_model_exclude_defaults=route.response_model_exclude_defaults,
                response_model_exclude_none=route.response_model_exclude_none,
                include_in_schema=route.include_in_schema,
                response_class=route.response_class,
                name=route.name,
                callbacks=route.callbacks,
                openapi_extra=route.openapi_extra,
                generate_unique_id_function=route.generate_unique_id_function,
                strict_content_type=route.strict_content_type,
                max_body_size=route.max_body_size,
            )
        elif isinstance(route, APIWebSocketRoute):
            app.router.add_api_websocket_route(
                route.path, route.endpoint, route.name, dependencies=route.dependencies
            )
        elif isinstance(route, WebSocketRoute):
            app.router.add_websocket_route(route.path, route.endpoint, route.name)
        else:
            raise TypeError(f"{route!r}: add_flat registers FastAPI routes and WebSocket routes only")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(
        title="FastAPI deployment blueprint",
        description=schema.DESCRIPTION,
        docs_url=None,  # service/docs.py serves it, with Swagger UI's files from the image
        openapi_url="/openapi.json",
        telemetry=None if settings.app_opentelemetry else NO_TELEMETRY,
        lifespan=rooms.lifespan,
    )
    app.state.settings = settings  # what the routes' `app_settings` dependency reads
    install_error_handlers(app)
    if settings.app_demo_routes:
        docs.install(app, openapi_url="/openapi.json")
    for router in ROUTERS:
        # The error bodies are the handlers' above (and nginx's, uvicorn's), not FastAPI's.
        add_flat(app, router, responses=schema.ERRORS)
    if not settings.app_demo_routes:
        # nginx answers its 404 for these before the app; the app does not serve them either.
        kept = [route for route in app.router.routes if getattr(route, "path", "") not in routes.DEMO_ONLY]
        app.router.routes[:] = kept

    def openapi() -> dict[str, Any]:
        # FastAPI caches the schema; both steps are no-ops the second time (the limits' markers are gone).
        return schema.contract(routes.document_limits(FastAPI.openapi(app), settings))

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
