"""People's credentials: ``Authorization: Bearer <token>`` and a role check.

:func:`require_role` is the one dependency every people's route (and the dashboard) uses. An
agent's signature headers are not a person's credential, so an agent can never read reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from proscribe.collector.api.errors import ApiError
from proscribe.collector.api.state import get_state
from proscribe.collector.storage.users import Principal, principal_for_token

bearer = HTTPBearer(auto_error=False, description="API token from 'proscribe collector user add'")


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated person, or 401. The dashboard may set ``request.state.principal``
    (e.g. from a session cookie) before this runs."""
    preset = getattr(request.state, "principal", None)
    if isinstance(preset, Principal):
        return preset
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    token = credentials.credentials
    if len(token) > 256:
        raise ApiError(401, "unauthorized", "invalid token", {"WWW-Authenticate": "Bearer"})
    state = get_state(request)

    def lookup() -> Principal | None:
        with state.db.read() as conn:
            return principal_for_token(conn, token)

    principal = await run_in_threadpool(lookup)
    if principal is None:
        raise ApiError(
            401, "unauthorized", "unknown or revoked token", {"WWW-Authenticate": "Bearer"}
        )
    return principal


def require_role(role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must hold ``role`` (admin includes viewer)."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has_role(role):
            raise ApiError(403, "forbidden", f"this needs the {role} role")
        return principal

    return dependency
