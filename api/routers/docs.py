"""/docs and /redoc served from an installed package, not a CDN: control planes run air-gapped.

The assets (Swagger UI, ReDoc, favicon) come from the `fastapi-standalone-docs` wheel; only its
files are used, through FastAPI's own page builders.
"""

from pathlib import Path

import fastapi_standalone_docs
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
_STATIC = Path(fastapi_standalone_docs.__file__).parent / "static"


def install_offline_docs(app: FastAPI) -> None:
    """Expects the app to be built with docs_url=None and redoc_url=None."""
    app.mount(ASSETS_URL, StaticFiles(directory=_STATIC), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    favicon = f"{ASSETS_URL}/fastapi/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
