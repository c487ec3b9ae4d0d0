"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served from this server only.

FastAPI's own pages load their scripts, styles and fonts from a CDN: blank on an air-gapped
network, and code from elsewhere running next to the API's tokens. They are off
(``docs_url=None``); with ``[server] api_docs = true`` these pages are served instead, with the
assets of the ``fastapi-offline`` package (Swagger UI 5, ReDoc; install the ``apidocs`` extra)
and two small start-up scripts as files, so the policy of
:data:`proscribe.collector.guard.DOCS_CSP` allows scripts from this server only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

ASSETS_URL = "/docs/assets"
PACKAGE = "fastapi_offline"
_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_SWAGGER_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""
_REDOC_INIT = """Redoc.init("/openapi.json", {}, document.getElementById("redoc"));
"""
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Proscribe collector API</title>
<link rel="icon" href="{assets}/favicon.png">
{head}
</head>
<body>
{body}
</body>
</html>
"""


def assets_folder() -> Path | None:
    """Where the installed ``fastapi-offline`` keeps its static files, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if all((folder / name).is_file() for name in _FILES) else None


def install_api_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets (the config checked the package is there)."""
    folder = assets_folder()
    if folder is None:
        raise RuntimeError(f"{PACKAGE} is not installed (the config check should have said)")
    assets = {name: (folder / name).read_bytes() for name in _FILES}
    assets["swagger-init.js"] = _SWAGGER_INIT.encode()
    assets["redoc-init.js"] = _REDOC_INIT.encode()
    media = {**_FILES, "swagger-init.js": _FILES["swagger-ui-bundle.js"]}
    media["redoc-init.js"] = media["swagger-init.js"]
    swagger = _PAGE.format(
        assets=ASSETS_URL,
        head=f'<link rel="stylesheet" href="{ASSETS_URL}/swagger-ui.css">',
        body=f'<div id="swagger-ui"></div>\n<script src="{ASSETS_URL}/swagger-ui-bundle.js">'
        f'</script>\n<script src="{ASSETS_URL}/swagger-init.js"></script>',
    )
    redoc = _PAGE.format(
        assets=ASSETS_URL,
        head="",
        body=f'<div id="redoc"></div>\n<script src="{ASSETS_URL}/redoc.standalone.js">'
        f'</script>\n<script src="{ASSETS_URL}/redoc-init.js"></script>',
    )

    # async: every answer here is bytes already in memory.
    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return HTMLResponse(swagger)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> Response:
        return HTMLResponse(redoc)

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            raise HTTPException(404, "no such asset")
        return Response(body, media_type=media[name], headers={"Cache-Control": "max-age=3600"})
