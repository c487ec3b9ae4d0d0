"""What every dashboard page shares: templates, the session signer, the rollup, and the
dependencies that decide who is looking (``viewer`` / ``admin``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from jinja2 import Environment
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse

from proscribe.collector.api.ratelimit import LoginThrottle
from proscribe.collector.api.state import CollectorState, get_state
from proscribe.collector.storage.users import Principal
from proscribe.collector.web import queries as webq
from proscribe.collector.web.render import render
from proscribe.collector.web.rollup import ViolationRollup
from proscribe.collector.web.security import LoginRequired, PageError
from proscribe.collector.web.session import SESSION_COOKIE, Session, SessionSigner

T = TypeVar("T")
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
        self.rollup = ViolationRollup()
        self.login_throttle = LoginThrottle()

    async def read(self, request: Request, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a read connection in the thread pool (the database is blocking)."""
        state = get_state(request)

        def run() -> T:
            with state.db.read() as conn:
                return work(conn)

        return await run_in_threadpool(run)

    @staticmethod
    def state(request: Request) -> CollectorState:
        return get_state(request)

    async def visitor(self, request: Request) -> Visitor:
        state = get_state(request)
        session = self.signer.check(request.cookies.get(SESSION_COOKIE), state.clock())
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if session is None:
            raise LoginRequired(target)
        principal = await self.read(request, lambda c: webq.user_by_id(c, session.user_id))
        if principal is None:
            raise LoginRequired(target)
        visitor = Visitor(principal, session, self.signer.csrf_token(session.session_id))
        request.state.visitor = visitor  # error pages show the navigation of this visitor
        return visitor

    async def viewer(self, request: Request) -> Visitor:
        return await self.visitor(request)

    async def admin(self, request: Request) -> Visitor:
        visitor = await self.visitor(request)
        if not visitor.is_admin:
            raise PageError(403, "Not allowed", "This page needs the admin role.")
        return visitor

    async def check_csrf(self, request: Request, visitor: Visitor) -> dict[str, str]:
        """The submitted form, after its CSRF token is checked (403 otherwise)."""
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not self.signer.check_csrf(visitor.session.session_id, values.get("csrf")):
            raise PageError(403, "Form expired", "Reload the page and submit the form again.")
        return values

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


def site_of(request: Request) -> Site:
    """The dashboard the request is routed to (set by the route class before dependencies)."""
    site: Site = getattr(request.state, SITE_STATE)
    return site


async def _viewer(request: Request) -> Visitor:
    return await site_of(request).viewer(request)


async def _admin(request: Request) -> Visitor:
    return await site_of(request).admin(request)


Viewer = Annotated[Visitor, Depends(_viewer)]
Admin = Annotated[Visitor, Depends(_admin)]
