"""Failure handling shared by every dashboard route.

:class:`DashboardRoute` is the router's ``route_class``: it turns the dashboard's own
exceptions into HTML answers (a redirect to the login page, a 403 page, a 400 page for a bad
filter). The security headers are stamped on every answer of the app, error pages and
unhandled errors included, by :class:`proscribe.collector.guard.ResponseGuard`: the dashboard's
policy allows no script at all and styles only from this server, so even an HTML-injection bug
could not run code or load anything from elsewhere.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from proscribe.collector.guard import DASHBOARD_CSP

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = DASHBOARD_CSP


class LoginRequired(Exception):
    """No valid session: send the browser to the login page, then back here."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageError(Exception):
    """An HTML error page (403 for a viewer on an admin page, 404, 400 for a bad filter)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail


ErrorRenderer = Callable[[Request, PageError], Response]


def login_redirect(next_path: str) -> RedirectResponse:
    query = urllib.parse.urlencode({"next": next_path})
    return RedirectResponse(f"/login?{query}", status_code=303)


def make_route_class(
    render_error: ErrorRenderer, state: tuple[str, object] | None = None
) -> type[APIRoute]:
    """A route class bound to the dashboard's error page renderer; ``state`` is a
    ``(name, value)`` put on ``request.state`` before the dependencies run."""

    class DashboardRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                if state is not None:
                    setattr(request.state, state[0], state[1])
                try:
                    response = await handler(request)
                except LoginRequired as err:
                    response = login_redirect(err.next_path)
                except PageError as err:
                    response = render_error(request, err)
                except RequestValidationError as err:
                    fields = (
                        ", ".join(str(e["loc"][-1]) for e in err.errors() if e.get("loc"))
                        or "the request"
                    )
                    response = render_error(
                        request,
                        PageError(400, "Bad request", f"Check {fields} and try again."),
                    )
                except HTTPException as err:
                    response = render_error(
                        request, PageError(err.status_code, "Request refused", str(err.detail))
                    )
                return response

            return route

    return DashboardRoute
