"""The dependencies routes declare, as ``Annotated`` aliases (in the manner of
full-stack-fastapi-template's ``api/deps.py``): the collector's state, a database connection,
the person calling and their role, the agent that signed the request, the violations filter.

Routes are plain ``def`` functions (FastAPI runs them in its thread pool, the database being
blocking). Dependencies that only look at the request are ``async def`` so they cost no thread
hop; the ones that touch the database are ``def``. Connections are ``scope="function"``: a
write commits (or rolls back on any exception) *before* the answer is sent, so a client never
hears "done" about something not yet durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection

from proscribe.collector.api.agent_auth import AuthenticatedAgent, path_and_query
from proscribe.collector.api.body import decode_content, read_body, require_json
from proscribe.collector.api.errors import ApiError, invalid_parameter
from proscribe.collector.api.state import CollectorState
from proscribe.collector.filters import (
    CHOICES,
    MAX_FILTER_TEXT,
    FilterError,
    parse_violation_filter,
)
from proscribe.collector.storage.queries import ViolationFilter
from proscribe.collector.storage.users import Principal, principal_for_token
from proscribe.collector.timespec import RELATIVE_PATTERN
from proscribe.core.wire.auth import H_SIGNATURE

# --- the app's state and the database ------------------------------------------------------


async def get_state(request: Request) -> CollectorState:
    state: CollectorState = request.app.state.collector
    return state


StateDep = Annotated[CollectorState, Depends(get_state)]


def read_connection(state: StateDep) -> Iterator[Connection]:
    with state.db.read() as conn:
        yield conn


def write_connection(state: StateDep) -> Iterator[Connection]:
    """A durable write transaction (SQLite: one writer at a time, ``synchronous=FULL``)."""
    with state.db.write() as conn:
        yield conn


ReadConn = Annotated[Connection, Depends(read_connection, scope="function")]
WriteConn = Annotated[Connection, Depends(write_connection, scope="function")]

# --- people -----------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="API token from 'proscribe collector user add'")


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


def current_principal(
    request: Request,
    conn: ReadConn,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated person, or 401. The dashboard may set ``request.state.principal``
    (from its session cookie) before this runs."""
    preset = getattr(request.state, "principal", None)
    if isinstance(preset, Principal):
        return preset
    if credentials is None or not credentials.credentials:
        raise _unauthorized("send Authorization: Bearer <token>")
    token = credentials.credentials
    if len(token) > 256:
        raise _unauthorized("invalid token")
    principal = principal_for_token(conn, token)
    if principal is None:
        raise _unauthorized("unknown or revoked token")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must hold ``role`` (admin includes viewer); 403 otherwise.
    An agent's signature is not a person's credential, so agents get 401 here."""

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if not principal.has_role(role):
            raise ApiError(403, "forbidden", f"this needs the {role} role")
        return principal

    return dependency


ViewerDep = Annotated[Principal, Depends(require_role("viewer"))]
AdminDep = Annotated[Principal, Depends(require_role("admin"))]

# --- agents -----------------------------------------------------------------------------------

# Documents the agent's signature in the OpenAPI security schemes; the check itself needs the
# body and the other X-Proscribe-* headers (see proscribe.core.wire.auth).
agent_signature = APIKeyHeader(
    name=H_SIGNATURE,
    auto_error=False,
    scheme_name="agentSignature",
    description="Ed25519 signature with X-Proscribe-Agent, -Time and -Nonce over the method, "
    "the path with its query, the body's SHA-256, the time and the nonce "
    "(proscribe.core.wire.auth)",
)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """An authenticated agent request: who signed it and its body (decompressed, capped)."""

    agent: AuthenticatedAgent
    body: bytes


def request_target(request: Request) -> str:
    """The path and query exactly as the client sent them (what the agent signed)."""
    return path_and_query(
        request.scope.get("raw_path") or request.url.path,
        request.scope.get("query_string", b""),
    )


def raw_body(limit: int) -> Callable[..., Awaitable[bytes]]:
    """A dependency: the request body as sent (still compressed), at most ``limit`` bytes."""

    # async, on the event loop: the cap counts the bytes as they stream in, whatever
    # Content-Length claims (see proscribe.collector.api.body).
    async def read(request: Request) -> bytes:
        return await read_body(request, limit)

    return read


def verify_signed(
    state: CollectorState, conn: Connection, request: Request, raw: bytes, limit: int
) -> SignedRequest:
    """Authenticate the agent's signature over ``raw`` (401), then the body: JSON (415),
    decompressed within ``limit`` (413). The nonce is consumed later, in the write."""
    agent = state.authenticator.authenticate(
        conn, request.headers, request.method, request_target(request), raw
    )
    if limit == 0:
        return SignedRequest(agent, b"")
    require_json(request.headers)
    # Decompressing up to 1 MiB takes milliseconds: in the worker thread, not on the loop.
    body = decode_content(raw, request.headers.get("content-encoding"), limit)
    return SignedRequest(agent, body)


def signed_request(limit: int) -> Callable[..., SignedRequest]:
    """A dependency for an agent route whose body may be at most ``limit`` bytes (0: none)."""

    # Depends() as defaults, not in Annotated: the body reader is local to this factory, and
    # a string annotation (PEP 563) naming it could not be resolved from the module's globals.
    def verify(
        request: Request,
        state: StateDep,
        raw: bytes = Depends(raw_body(limit)),
        _documented: str | None = Depends(agent_signature),
    ) -> SignedRequest:
        with state.db.read() as conn:
            return verify_signed(state, conn, request, raw, limit)

    return verify


# --- the violations filter --------------------------------------------------------------------

_NO_NUL = r"^[^\x00]*$"
TimeParam = Annotated[
    str,
    Query(
        max_length=64,
        description="30d, 12h, 15m, 90s ago, or RFC 3339 with a zone (years 1 to 9999 in "
        "UTC); empty: no bound",
        json_schema_extra={
            "anyOf": [
                {"const": ""},
                {"pattern": RELATIVE_PATTERN},
                {"format": "date-time"},
            ]
        },
    ),
]
TextParam = Annotated[
    str,
    Query(max_length=MAX_FILTER_TEXT, pattern=_NO_NUL, description="exact match; empty: any"),
]


def _choice_param(name: str) -> object:
    return Query(
        description=f"one of {', '.join(CHOICES[name])}; empty: any",
        json_schema_extra={"enum": ["", *CHOICES[name]]},
    )


async def violation_query(
    state: StateDep,
    since: TimeParam = "",
    until: TimeParam = "",
    host: TextParam = "",
    user: TextParam = "",
    rule: TextParam = "",
    kind: Annotated[str, _choice_param("kind")] = "",
    action: Annotated[str, _choice_param("action")] = "",
    severity: Annotated[str, _choice_param("severity")] = "",
) -> ViolationFilter:
    """The shared filter parser (:mod:`proscribe.collector.filters`); 422 naming the
    parameter for a bad value."""
    values = {
        "since": since, "until": until, "host": host, "user": user, "rule": rule,
        "kind": kind, "action": action, "severity": severity,
    }  # fmt: skip
    try:
        return parse_violation_filter(values, state.clock())
    except FilterError as err:
        raise invalid_parameter("query", err.param, err.reason) from err


ViolationQuery = Annotated[ViolationFilter, Depends(violation_query)]
