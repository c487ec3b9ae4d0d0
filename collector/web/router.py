"""``build_dashboard()``: the dashboard's routes, for ``create_app`` to include.

Pages: ``/`` (overview), ``/violations`` (+ ``/violations/export.csv|json``), ``/hosts``,
``/hosts/{agent_id}``, ``/policy``, ``/report`` (+ ``/report/export.html|csv|json``),
``/admin`` (admin role), ``/login``, ``/logout``, and the stylesheet under ``/static/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from proscribe.collector.web import account, admin_pages, pages, report_pages
from proscribe.collector.web.render import STATIC, TEMPLATES, build_environment
from proscribe.collector.web.security import PageError, make_route_class
from proscribe.collector.web.session import SessionSigner
from proscribe.collector.web.site import NAV, SITE_STATE, Site

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


class Dashboard:
    """The dashboard's router, and its error page for the app's last-resort 500."""

    def __init__(self, router: APIRouter, env: Environment) -> None:
        self.router = router
        self._env = env

    def error_page(self, status: int, title: str, detail: str) -> str:
        err = PageError(status, title, detail)
        return self._env.get_template("error.html").render(
            visitor=None, nav=NAV, active="", csrf="", err=err
        )


def build_dashboard(
    *, session_key: bytes | None = None, templates: Path = TEMPLATES, static: Path = STATIC
) -> Dashboard:
    """The dashboard. ``session_key`` signs login cookies; without one a random key is made
    (sessions end when the process restarts)."""
    env = build_environment(templates)
    site = Site(env, SessionSigner(session_key))
    assets = {
        p.name: (p.read_bytes(), STATIC_TYPES[p.suffix])
        for p in sorted(static.iterdir())
        if p.suffix in STATIC_TYPES
    }

    def render_error(request: Request, err: PageError) -> Response:
        visitor = getattr(request.state, "visitor", None)
        html = env.get_template("error.html").render(
            visitor=visitor, nav=NAV, active="", csrf=visitor.csrf if visitor else "", err=err
        )
        return HTMLResponse(html, status_code=err.status)

    router = APIRouter(
        route_class=make_route_class(render_error, (SITE_STATE, site)), tags=["dashboard"]
    )

    # async: the assets are bytes in memory, no thread is needed to answer.
    @router.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise PageError(404, "Not found", "No such file.")
        body, media = asset
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=3600"})

    account.register(router, site)
    pages.register(router, site)
    report_pages.register(router, site)
    admin_pages.register(router, site)
    return Dashboard(router, env)
