"""/docs: FastAPI's Swagger UI page with its JavaScript, CSS and icon served by the app itself, from the
files the fastapi-offline package ships, instead of a public CDN: it works without internet access and puts
no third-party script on the app's origin."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

DOCS_URL: Final = "/docs"
ASSETS_URL: Final = "/docs/assets"
ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI, openapi_url: str) -> None:
    """GET /docs and its assets, off the schema; FastAPI's own page is turned off (docs_url=None)."""
    directory = assets_dir()

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    async def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, f"no docs asset {name!r}")
        cache = {"Cache-Control": "max-age=3600"}
        return FileResponse(directory / name, media_type=media_type, headers=cache)

    app.add_api_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_api_route(f"{ASSETS_URL}/{{name}}", asset, include_in_schema=False)
