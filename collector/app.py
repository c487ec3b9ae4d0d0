"""The collector's composition root: ``create_app(settings) -> FastAPI``.

Routers, middleware, exception handlers and the lifespan are listed here explicitly. The
database is opened and migrated in the lifespan (so importing the app has no side effects);
``clock`` is injected so tests can move time. Routes get what they need through the
dependencies of :mod:`proscribe.collector.api.deps`.

Middleware, outermost first: :class:`~proscribe.collector.guard.ResponseGuard` (security
headers on every answer; a bug becomes a 500 in the path's format), the nonce purge, the
metrics, the heartbeat's fast path (PostgreSQL).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from proscribe.collector.api.agent_auth import AgentAuthenticator
from proscribe.collector.api.agent_routes import HeartbeatFastPath, build_agent_router
from proscribe.collector.api.errors import install_error_handlers
from proscribe.collector.api.metrics import Metrics, MetricsMiddleware
from proscribe.collector.api.openapi import CollectorApi
from proscribe.collector.api.ops_routes import build_ops_router
from proscribe.collector.api.people_routes import build_people_router
from proscribe.collector.api.ratelimit import EnrollRateLimiter
from proscribe.collector.api.responses import SafeJSONResponse
from proscribe.collector.api.state import CollectorState
from proscribe.collector.apidocs import install_api_docs
from proscribe.collector.config import CollectorSettings
from proscribe.collector.forward.runner import ForwardRunner
from proscribe.collector.guard import ResponseGuard
from proscribe.collector.storage import Database, open_database, to_us, upgrade
from proscribe.collector.storage.agents import purge_nonces
from proscribe.collector.storage.buckets import purge_idle as purge_idle_buckets
from proscribe.collector.storage.heartbeat_batch import HeartbeatFlusher
from proscribe.collector.web import build_dashboard
from proscribe.core import __version__

log = logging.getLogger(__name__)

NONCE_PURGE_INTERVAL = 60.0


def create_app(
    settings: CollectorSettings,
    *,
    clock: Callable[[], float] = time.time,
    database: Database | None = None,
    migrate: bool = True,
) -> FastAPI:
    """Build the app; the database opens (and migrates) when the lifespan starts."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = database or open_database(settings.database_url)
        if migrate:
            upgrade(db)
        with db.write() as conn:
            purge_nonces(conn, to_us(clock()))
        app.state.collector = CollectorState(
            settings=settings,
            db=db,
            clock=clock,
            metrics=metrics,
            authenticator=AgentAuthenticator(clock),
            enroll_limiter=EnrollRateLimiter(settings.enroll, clock, db),
        )
        heartbeats = _start_heartbeat_flusher(app.state.collector)
        purger = _NoncePurger(app.state.collector)
        app.state.nonce_purger = purger
        forwarding = ForwardRunner(db, settings.forwards, clock)
        forwarding.start()
        log.info("collector ready on %s (%s)", settings.source, db.dialect)
        try:
            yield
        finally:
            forwarding.stop()
            if heartbeats is not None:
                heartbeats.stop()
            if database is None:
                db.dispose()

    app = CollectorApi(
        title="Proscribe collector",
        version=__version__,
        description="Agent ingest (signed), policy distribution, and reports for people.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        # Off: FastAPI's pages load their scripts from a CDN. install_api_docs serves them
        # from local files when [server] api_docs = true.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(build_agent_router())
    app.include_router(build_people_router())
    app.include_router(build_ops_router())
    if settings.api_docs:
        install_api_docs(app)
    dashboard = build_dashboard(session_key=settings.session_key)
    app.include_router(dashboard.router)
    app.add_middleware(HeartbeatFastPath)  # innermost: see its docstring
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: _known_paths(app))
    app.add_middleware(_NoncePurgeMiddleware)
    app.add_middleware(ResponseGuard, error_page=dashboard.error_page)
    return app


def _start_heartbeat_flusher(state: CollectorState) -> HeartbeatFlusher | None:
    """PostgreSQL: heartbeats in batches (storage.heartbeat_batch). SQLite has one writer at
    a time anyway, and each heartbeat keeps its own short transaction there."""
    if state.db.is_sqlite:
        return None
    flusher = HeartbeatFlusher(
        state.db,
        now_us=state.now_us,
        window_us=int(state.settings.heartbeat_window * 1_000_000),
    )
    flusher.start()
    state.heartbeats = flusher
    threading.Thread(target=_preload_keys, args=(state,), name="agent-keys", daemon=True).start()
    return flusher


def _preload_keys(state: CollectorState) -> None:
    """Every enrolled agent's key in the replica's cache, in the background: the heartbeat
    fast path then checks signatures without a database look-up from the first minute on
    (revocation is still checked in every heartbeat's batch)."""
    started = time.monotonic()
    try:
        loaded = state.authenticator.preload(state.db)
    except Exception:  # the cache fills request by request instead
        log.exception("loading the agents' keys")
        return
    log.info("loaded %d agent keys in %.1f s", loaded, time.monotonic() - started)


def _known_paths(app: FastAPI) -> set[str]:
    """Route templates without parameters, the only paths used as metric labels."""
    paths: set[str] | None = getattr(app.state, "known_paths", None)
    if paths is None:
        paths = {p for p in app.openapi()["paths"] if "{" not in p}
        app.state.known_paths = paths
    return paths


class _NoncePurger:
    """Deletes expired nonces at most once a minute, piggybacking on requests (no thread)."""

    def __init__(self, state: CollectorState) -> None:
        self._state = state
        self._next = state.clock() + NONCE_PURGE_INTERVAL

    def due(self) -> bool:
        now = self._state.clock()
        if now < self._next:
            return False
        self._next = now + NONCE_PURGE_INTERVAL
        return True

    def run(self) -> None:
        with self._state.db.write() as conn:
            purged = purge_nonces(conn, self._state.now_us())
            idle = purge_idle_buckets(conn, self._state.now_us())
        log.debug("purged %d expired nonces, %d idle rate buckets", purged, idle)


class _NoncePurgeMiddleware:
    """After a response, run the nonce purge when it is due (in a worker thread: middleware
    runs on the event loop, and the purge is a blocking database write)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] != "http":
            return
        purger = getattr(getattr(scope.get("app"), "state", None), "nonce_purger", None)
        if isinstance(purger, _NoncePurger) and purger.due():
            await run_in_threadpool(purger.run)
