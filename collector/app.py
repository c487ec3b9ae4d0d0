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
from proscribe.collector.storage import Database, counts, open_database, to_us, upgrade
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
        _check_counts(db)
        app.state.collector = CollectorState(
            settings=settings,
            db=db,
            clock=clock,
            metrics=metrics,
            authenticator=AgentAuthenticator(clock),
            enroll_limiter=EnrollRateLimiter(settings.enroll, clock, db),
        )
        heartbeats, preload = _start_heartbeat_flusher(app.state.collector)
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
            if preload is not None:  # its connection back before the pool is disposed
                preload.join(timeout=30)
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


def _check_counts(db: Database) -> None:
    """The 8-day blocks of the violation counts agree with the daily rows, or are rebuilt
    from them: a collector older than migration 0009 still storing events after another
    replica migrated the database counts them by day only, and a report would read its
    blocks short (docs/operations.md, "Upgrades"). One grouped pass over the counts at start
    (~1 s at 4M rows)."""
    with db.read() as conn:
        if not counts.disagreeing_blocks(conn):
            return
    with db.write() as conn:
        wrong = counts.repair_blocks(conn)
    if wrong:
        log.warning(
            "violation_blocks disagreed with violation_counts in %d blocks of 8 days (an older "
            "collector stored or purged events after the upgrade?): rebuilt from the daily "
            "counts",
            len(wrong),
        )


def _start_heartbeat_flusher(
    state: CollectorState,
) -> tuple[HeartbeatFlusher | None, threading.Thread | None]:
    """PostgreSQL: heartbeats in batches (storage.heartbeat_batch), and the agents' keys
    loaded in the background (the thread is returned: a stop waits for it). SQLite has one
    writer at a time anyway, and each heartbeat keeps its own short transaction there."""
    if state.db.is_sqlite:
        return None, None
    flusher = HeartbeatFlusher(
        state.db,
        now_us=state.now_us,
        window_us=int(state.settings.heartbeat_window * 1_000_000),
    )
    flusher.start()
    state.heartbeats = flusher
    preload = threading.Thread(target=_preload_keys, args=(state,), name="agent-keys", daemon=True)
    preload.start()
    return flusher, preload


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
