"""Logging in and out of the dashboard with a collector user's name and password.

The login form has no session yet, so its CSRF token is bound to a random pre-login cookie
(``SameSite=Strict`` too). A failed login answers the same message whatever was wrong.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from proscribe.collector.api.deps import ReadConn, StateDep
from proscribe.collector.storage.users import principal_for_password
from proscribe.collector.web.session import LOGIN_COOKIE, SESSION_COOKIE
from proscribe.collector.web.site import CheckedForm, FormDep, Site

log = logging.getLogger(__name__)


def safe_next(value: str | None) -> str:
    """Only a path on this server (never ``//evil`` or a full URL) may follow a login."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 0x20 for ch in value) or len(value) > 2000:
        return "/"
    return value


def _secure(request: Request, state: StateDep) -> bool:
    return request.url.scheme == "https" or state.settings.tls


def register(router: APIRouter, site: Site) -> None:
    def login_page(
        request: Request, state: StateDep, next_path: str, error: str = "", status: int = 200
    ) -> HTMLResponse:
        nonce = request.cookies.get(LOGIN_COOKIE) or site.signer.new_login_nonce()
        if len(nonce) > 64:
            nonce = site.signer.new_login_nonce()
        response = site.page(
            "login.html",
            None,
            "login",
            {
                "next": safe_next(next_path),
                "error": error,
                "login_csrf": site.signer.csrf_token("login:" + nonce),
            },
            status=status,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=_secure(request, state),
            path="/login",
        )
        return response

    @router.get("/login", include_in_schema=False)
    def login_form(
        request: Request, state: StateDep, next: Annotated[str, Query(max_length=2000)] = "/"
    ) -> Response:
        return login_page(request, state, next)

    @router.post("/login", include_in_schema=False)
    def login_submit(
        request: Request, values: FormDep, state: StateDep, conn: ReadConn
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        next_path = safe_next(values.get("next"))
        if not nonce or not site.signer.check_csrf("login:" + nonce, values.get("csrf")):
            return login_page(
                request, state, next_path, "The form expired; please sign in again.", 403
            )
        name = values.get("username", "")[:256]
        password = values.get("password", "")[:1024]
        client = request.client.host if request.client else "unknown"
        now = state.clock()
        wait = site.login_throttle.wait(state.db, client, name, now)
        if wait > 0:
            log.warning("dashboard login throttled for %r from %s", name[:64], client)
            seconds = max(1, math.ceil(wait))
            throttled = login_page(
                request,
                state,
                next_path,
                f"Too many failed sign-ins; try again in {seconds} s.",
                429,
            )
            throttled.headers["Retry-After"] = str(seconds)
            return throttled

        principal = principal_for_password(conn, name, password)
        if principal is None:
            site.login_throttle.failed(state.db, client, name, now)
            log.info("dashboard login failed for %r", name[:64])
            return login_page(request, state, next_path, "Wrong user name or password.", 401)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            site.signer.issue(principal.user_id, state.clock()),
            max_age=site.signer.lifetime_s,
            httponly=True,
            samesite="strict",
            secure=_secure(request, state),
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        log.info("dashboard login: %s (%s)", principal.name, principal.role)
        return response

    @router.post("/logout", include_in_schema=False)
    def logout(_form: CheckedForm) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
