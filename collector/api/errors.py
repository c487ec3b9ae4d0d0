"""Every error the collector's API returns is JSON ``{"error": slug, "detail": …}`` (schema
:class:`ErrorBody`) with a 4xx status, and every route documents the ones it can answer
(:func:`error_responses`), so the OpenAPI document tells a client the truth.

A true bug is answered by :mod:`proscribe.collector.guard` (a generic 500, never a traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from proscribe.collector.api.responses import SafeJSONResponse

log = logging.getLogger(__name__)

_SLUGS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}

_MEANING = {
    400: "malformed request (Content-Length, a body cut short)",
    401: "missing or refused credentials",
    403: "the caller's role does not allow this",
    404: "no such resource",
    409: "conflicts with the stored state",
    413: "body too large",
    415: "Content-Type is not application/json, or Content-Encoding is not gzip",
    422: "invalid request: the detail names each bad field or parameter",
    429: "rate limited; Retry-After says when to try again",
}


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str


class ErrorBody(BaseModel):
    """The body of every 4xx (and of the generic 500)."""

    error: str
    detail: str | list[ErrorItem] | None = None


def error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, each with :class:`ErrorBody`; a keyword
    ``s401="…"`` replaces the default description of that status."""
    return {
        status: {
            "model": ErrorBody,
            "description": described.get(f"s{status}", _MEANING[status]),
        }
        for status in statuses
    }


class ApiError(Exception):
    """Raised anywhere in a request to answer ``status`` with ``{"error": error, ...}``."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def invalid_parameter(location: str, name: str, reason: str) -> ApiError:
    """422 for one bad parameter, shaped like a validation error (``loc`` names it)."""
    return ApiError(422, "invalid_request", [{"loc": [location, name], "msg": reason}])


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _safe_text(value: object, limit: int = 300) -> str:
    # Messages may quote client input; keep them printable and bounded.
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "…"


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input (which may not even be JSON-encodable)."""
    result = []
    for err in list(errors)[:20]:
        loc = [part if isinstance(part, int) else _safe_text(part, 100) for part in err["loc"]]
        result.append({"loc": loc, "msg": _safe_text(err["msg"])})
    return result


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first
    route's, and GET and PUT /api/v1/policy are two routes)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    slug = _SLUGS.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return error_response(exc.status_code, slug, detail, headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", validation_detail(exc.errors()))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
