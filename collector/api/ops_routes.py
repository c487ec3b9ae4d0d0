"""Operations endpoints: ``/healthz`` (liveness + database) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from proscribe.collector.api.state import get_state
from proscribe.collector.storage.agents import count_agents


def build_ops_router() -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        state = get_state(request)

        def ping() -> None:
            with state.db.read() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except SQLAlchemyError:
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": state.db.dialect})

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format."""
        state = get_state(request)

        def agents() -> int:
            with state.db.read() as conn:
                return count_agents(conn)

        body = state.metrics.render(
            {"proscribe_agents": ("Enrolled, non-revoked agents.", await run_in_threadpool(agents))}
        )
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return router
