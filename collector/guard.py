"""What every answer carries, whatever produced it: security headers, and a 500 for a bug.

:class:`ResponseGuard` is the outermost middleware (pure ASGI, inside Starlette's own
``ServerErrorMiddleware``):

* Security headers go on every response — routes, the router's 404/405, error handlers,
  HEAD — chosen by path: the dashboard's policy (no script at all, styles from this server)
  for pages, ``default-src 'none'`` for the API and the operations endpoints, the API docs'
  own policy for ``/docs`` and ``/redoc``; ``X-Content-Type-Options: nosniff`` everywhere;
  ``Cache-Control: no-store`` unless the route chose otherwise (static assets).
* An exception no handler took is logged once, with its stack, and answered 500 in the
  format of the path: the dashboard's HTML error page for pages, ``{"error":
  "internal_error"}`` for the API. It is not re-raised: Starlette's ``ServerErrorMiddleware``
  re-raises after answering, which makes uvicorn log a second traceback and close the
  keep-alive connection under the next request. If the answer had already started (a streamed
  export failing half-way), the exception goes on up so the server drops the connection: a
  truncated download must not look complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proscribe.collector.literal import safe_json

log = logging.getLogger(__name__)

DASHBOARD_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# Swagger UI and ReDoc, served from this server only: their scripts and styles are files here
# (no inline script); both set inline style attributes, ReDoc runs its search in a worker.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
API_PREFIXES = ("/api/", "/healthz", "/metrics", "/openapi.json")
DOCS_PREFIXES = ("/docs", "/redoc")

ErrorPage = Callable[[int, str, str], str]

# The headers above as raw ASGI pairs, built once per policy: setting them one by one through
# MutableHeaders scanned the header list for each (a visible share of a heartbeat's CPU).
_GUARD_PAIRS = {
    csp: [
        (b"content-security-policy", csp.encode("latin-1")),
        *(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in COMMON_HEADERS.items()
        ),
    ]
    for csp in (DASHBOARD_CSP, API_CSP, DOCS_CSP)
}
_GUARD_NAMES = frozenset(name for name, _value in _GUARD_PAIRS[API_CSP])
_NO_STORE = (b"cache-control", b"no-store")


def _with_guard_headers(
    headers: Iterable[tuple[bytes, bytes]], policy: str
) -> list[tuple[bytes, bytes]]:
    """``headers`` with the guard's (replacing any of the same name) and ``Cache-Control:
    no-store`` unless the route set its own."""
    out = [(k, v) for k, v in headers if k.lower() not in _GUARD_NAMES]
    cached = any(k.lower() == b"cache-control" for k, _v in out)
    out += _GUARD_PAIRS[policy]
    if not cached:
        out.append(_NO_STORE)
    return out


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def content_security_policy(path: str) -> str:
    if is_api_path(path):
        return API_CSP
    if path.startswith(DOCS_PREFIXES):
        return DOCS_CSP
    return DASHBOARD_CSP


class ResponseGuard:
    def __init__(self, app: ASGIApp, error_page: ErrorPage) -> None:
        self.app = app
        self.error_page = error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        policy = content_security_policy(path)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _with_guard_headers(message.get("headers", ()), policy)
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), path)
            if started:
                raise
            await self._internal_error(path, guarded_send)

    async def _internal_error(self, path: str, send: Send) -> None:
        if is_api_path(path):
            body = safe_json({"error": "internal_error", "detail": "see the collector's log"})
            media = b"application/json"
        else:
            body = self.error_page(500, "Something went wrong", "See the collector's log.")
            media = b"text/html; charset=utf-8"
        data = body.encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", media),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
