"""What every dashboard page shares: templates, the session signer, the rollup, and the
dependencies that decide who is looking (``Viewer`` / ``Admin``) and check a form's CSRF token.

Pages are plain ``def`` routes, like the API's: the database is blocking, FastAPI runs them in
its thread pool, and the connection comes from :data:`proscribe.collector.api.deps.ReadConn`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse

from proscribe.collector.api.deps import ReadConn, StateDep
from proscribe.collector.api.ratelimit import LoginThrottle
from proscribe.collector.storage.users import Principal
from proscribe.collector.web import queries as webq
from proscribe.collector.web.render import render
from proscribe.collector.web.security import LoginRequired, PageError
from proscribe.collector.web.session import SESSION_COOKIE, Session, SessionSigner

SITE_STATE = "dashboard_site"

NAV = (
    ("overview", "/", "Overview"),
    ("violations", "/violations", "Violations"),
    ("hosts", "/hosts", "Hosts"),
    ("policy", "/policy", "Policy"),
    ("report", "/report", "Report"),
)


@dataclass(frozen=True, slots=True)
class Visitor:
    principal: Principal
    session: Session
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.has_role("admin")


class Site:
    def __init__(self, env: Environment, signer: SessionSigner) -> None:
        self.env = env
        self.signer = signer
        self.login_throttle = LoginThrottle()

    def page(
        self,
        name: str,
        visitor: Visitor | None,
        active: str,
        context: dict[str, Any],
        *,
        status: int = 200,
    ) -> HTMLResponse:
        full = {
            "visitor": visitor,
            "nav": NAV,
            "active": active,
            "csrf": visitor.csrf if visitor else "",
            **context,
        }
        return HTMLResponse(render(self.env, name, full), status_code=status)


async def site_of(request: Request) -> Site:
    """The dashboard the request is routed to (set by the route class before dependencies)."""
    site: Site = getattr(request.state, SITE_STATE)
    return site


SiteDep = Annotated[Site, Depends(site_of)]


def current_visitor(request: Request, site: SiteDep, state: StateDep, conn: ReadConn) -> Visitor:
    """The signed-in person (roles read fresh on every request), or off to the login page."""
    session = site.signer.check(request.cookies.get(SESSION_COOKIE), state.clock())
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if session is None:
        raise LoginRequired(target)
    principal = webq.user_by_id(conn, session.user_id)
    if principal is None:
        raise LoginRequired(target)
    visitor = Visitor(principal, session, site.signer.csrf_token(session.session_id))
    request.state.visitor = visitor  # error pages show the navigation of this visitor
    return visitor


Viewer = Annotated[Visitor, Depends(current_visitor)]


async def require_admin(visitor: Viewer) -> Visitor:
    if not visitor.is_admin:
        raise PageError(403, "Not allowed", "This page needs the admin role.")
    return visitor


Admin = Annotated[Visitor, Depends(require_admin)]


async def submitted_form(request: Request) -> dict[str, str]:
    """The posted form's text fields. async: the body is parsed as it streams in."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


FormDep = Annotated[dict[str, str], Depends(submitted_form)]


async def checked_form(visitor: Viewer, site: SiteDep, form: FormDep) -> dict[str, str]:
    """The submitted form, after its CSRF token is checked against the session (403)."""
    if not site.signer.check_csrf(visitor.session.session_id, form.get("csrf")):
        raise PageError(403, "Form expired", "Reload the page and submit the form again.")
    return form


CheckedForm = Annotated[dict[str, str], Depends(checked_form)]
