"""Operations endpoints: ``/healthz`` (liveness + database) and ``/metrics`` (Prometheus).

``/metrics`` names routes, outcomes and the fleet's size, which is not for everyone: by default
only loopback clients may read it (a Prometheus or a node exporter on the same host, or a
reverse proxy there that decides itself); ``[metrics] access = "token"`` lets a remote scraper
in with ``Authorization: Bearer`` and the token from ``token_file``; ``"open"`` is anyone.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from proscribe.collector.api.deps import StateDep, bearer
from proscribe.collector.api.errors import ApiError, error_responses
from proscribe.collector.api.responses import SafeJSONResponse
from proscribe.collector.forward.status import forward_status
from proscribe.collector.forward.status import render_metrics as render_forward_metrics
from proscribe.collector.storage.agents import count_agents
from proscribe.core.netaddr import is_loopback


async def metrics_access(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """403 unless the client may read the metrics (see the module's docstring)."""
    policy = state.settings.metrics
    if policy.access == "open":
        return
    if policy.access == "token":
        given = credentials.credentials.encode() if credentials else b""
        if policy.token and hmac.compare_digest(given, policy.token):
            return
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <metrics token>",
            {"WWW-Authenticate": "Bearer"},
        )
    client = request.client.host if request.client else None
    if not is_loopback(client):
        raise ApiError(
            403, "forbidden", "metrics are served to loopback clients only ([metrics] access)"
        )


def build_ops_router() -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get(
        "/healthz",
        responses={503: {"description": "the database does not answer"}},
    )
    def healthz(state: StateDep) -> Response:
        """200 when the database answers, 503 otherwise."""
        try:
            with state.db.read() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return SafeJSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return SafeJSONResponse({"status": "ok", "database": state.db.dialect})

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=[Depends(metrics_access)],
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **error_responses(401, 403),
        },
    )
    def metrics(state: StateDep) -> Response:
        """Prometheus text format."""
        with state.db.read() as conn:
            agents = count_agents(conn)
            forwarding = forward_status(conn, state.settings.forwards, state.now_us())
        body = state.metrics.render({"proscribe_agents": ("Enrolled, non-revoked agents.", agents)})
        if forwarding:
            body += render_forward_metrics(forwarding)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return router
