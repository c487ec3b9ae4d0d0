"""The agent API: enroll, events, heartbeat, policy (GET). Everything but enroll is signed.

Bodies are read by hand, in async dependencies (see :mod:`body` and :mod:`deps`), so the byte
caps hold whatever the headers say; the routes themselves are plain ``def`` and run in the
thread pool, except the heartbeat (every agent's, every minute): ``async``, it awaits its
batch on PostgreSQL (:mod:`proscribe.collector.storage.heartbeat_batch`).
The OpenAPI document still describes the bodies through ``openapi_extra``.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from proscribe.collector.api.agent_auth import AuthenticatedAgent, decode_public_key, refusal
from proscribe.collector.api.body import decode_content, read_body, require_json
from proscribe.collector.api.deps import (
    SignedRequest,
    StateDep,
    WriteConn,
    agent_signature,
    get_state,
    request_target,
    signed_request,
    verify_signed,
)
from proscribe.collector.api.errors import (
    ApiError,
    error_response,
    error_responses,
    validation_detail,
)
from proscribe.collector.api.openapi import json_body, schema_of
from proscribe.collector.api.responses import SafeJSONResponse
from proscribe.collector.api.schema import EnrollRequest, EventIn, HeartbeatIn
from proscribe.collector.api.state import CollectorState
from proscribe.collector.ingest import final_verdicts, judge_events, parse_batch, parse_json_body
from proscribe.collector.storage.agents import (
    EnrollRefused,
    admit_enrollment,
    enroll_agent,
    set_agent_hostname,
)
from proscribe.collector.storage.events import insert_events_isolated
from proscribe.collector.storage.heartbeat_batch import HeartbeatFlusher, PendingHeartbeat
from proscribe.collector.storage.hosts import HeartbeatRecord, record_heartbeat
from proscribe.collector.storage.policies import current_policy, current_policy_ref
from proscribe.collector.storage.signers import list_signers
from proscribe.core.events import MAX_BATCH_BYTES, MAX_EVENTS_PER_BATCH, utc_now_iso
from proscribe.core.wire.auth import H_AGENT

log = logging.getLogger(__name__)

MAX_ENROLL_BYTES = 16 * 1024
MAX_HEARTBEAT_BYTES = 64 * 1024
HEARTBEAT_PATH = "/api/v1/heartbeat"

_SIGNED_ERRORS = error_responses(
    400,
    401,
    413,
    415,
    422,
    s401="unknown_agent, revoked_agent, bad_signature, stale_request or replayed_nonce",
)

EventsRequest = Annotated[SignedRequest, Depends(signed_request(MAX_BATCH_BYTES))]
PolicyRequest = Annotated[SignedRequest, Depends(signed_request(0))]

_EVENTS_BODY = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {
        "events": {
            "type": "array",
            "maxItems": MAX_EVENTS_PER_BATCH,
            # Any object enters the batch; each is judged on its own against EventIn (stored,
            # duplicate, or rejected with the reason in its result), so a bad event never
            # fails the others. Hence "an EventIn, or any other object".
            "items": {
                "anyOf": [schema_of(EventIn), {"type": "object"}],
                "description": "an event (EventIn); an object that is not one is rejected "
                "on its own, the others stored",
            },
        }
    },
}


async def enroll_request(request: Request) -> EnrollRequest:
    """The enrollment body, rate limited per address and globally before it is read.
    async: the body is read as it streams (capped), like every agent body."""
    state = await get_state(request)
    client = request.client.host if request.client else "unknown"
    # a database write (the shared buckets): off the event loop
    wait = await run_in_threadpool(state.enroll_limiter.check, client)
    if wait:
        raise ApiError(
            429, "rate_limited", "too many enrollments", {"Retry-After": str(int(wait) + 1)}
        )
    require_json(request.headers)
    body = decode_content(
        await read_body(request, MAX_ENROLL_BYTES),
        request.headers.get("content-encoding"),
        MAX_ENROLL_BYTES,
    )
    try:
        req = EnrollRequest.model_validate(parse_json_body(body))
    except ValidationError as err:
        if any(e["loc"][:1] == ("public_key",) for e in err.errors()):
            raise ApiError(
                422, "invalid_public_key", "public_key must be 'ed25519:BASE64' of 32 bytes"
            ) from err
        raise ApiError(422, "invalid_request", validation_detail(err.errors())) from err
    try:
        decode_public_key(req.public_key)
    except ValueError as err:
        raise ApiError(422, "invalid_public_key", str(err)) from err
    return req


def build_agent_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["agents"])

    @router.post(
        "/enroll",
        openapi_extra=json_body(schema_of(EnrollRequest)),
        responses=error_responses(
            400,
            401,
            403,
            413,
            415,
            422,
            429,
            s401="bad_secret (wrong, revoked, expired or used up)",
            s403="revoked_key, machine_banned or host_not_allowed",
        ),
    )
    def enroll(
        request: Request,
        req: Annotated[EnrollRequest, Depends(enroll_request)],
        state: StateDep,
        conn: WriteConn,
    ) -> dict[str, str]:
        """Exchange an enroll secret and the agent's public key for an agent id."""
        try:
            secret_id = admit_enrollment(
                conn,
                secret=req.secret,
                public_key=req.public_key,
                hostname=req.hostname,
                machine_id=req.machine_id,
                now_us=state.now_us(),
            )
        except EnrollRefused as refused:
            raise ApiError(refused.status, refused.slug, str(refused)) from refused
        agent_id = enroll_agent(
            conn,
            public_key=req.public_key,
            hostname=req.hostname,
            os_name=req.os,
            agent_version=req.agent_version,
            secret_id=secret_id,
            now_us=state.now_us(),
            machine_id=req.machine_id,
        )
        client = request.client.host if request.client else "unknown"
        log.info("enrolled agent %s (%s) from %s", agent_id, req.hostname, client)
        return {"agent_id": agent_id}

    @router.post("/events", openapi_extra=json_body(_EVENTS_BODY), responses=_SIGNED_ERRORS)
    def post_events(signed: EventsRequest, state: StateDep) -> Response:
        """Store a batch; one verdict per event: stored, duplicate or rejected (with why)."""
        return SafeJSONResponse({"results": store_batch(state, signed.agent, signed.body)})

    @router.post(
        HEARTBEAT_PATH.removeprefix("/api/v1"),
        openapi_extra=json_body(schema_of(HeartbeatIn)),
        responses=_SIGNED_ERRORS,
        dependencies=[Depends(agent_signature)],
    )
    async def heartbeat(request: Request) -> Response:
        """Record the host's state; answers the server time and the current policy serial."""
        # On PostgreSQL, HeartbeatFastPath answers before the router is reached.
        return await heartbeat_response(request, await get_state(request))

    @router.get(
        "/policy",
        responses={
            **error_responses(401, 404, s404="no_policy: nothing uploaded yet"),
            200: {"description": "the signed bundle (base64) with its serial and SHA-256"},
            304: {"description": "unchanged (If-None-Match matched the ETag)"},
        },
    )
    def get_policy(request: Request, signed: PolicyRequest, state: StateDep) -> Response:
        """The current signed policy bundle (the agent verifies it with its own trust)."""
        # A nonce only, like a heartbeat: no fsync wait.
        with state.db.write(durable=False) as conn:
            state.authenticator.consume(conn, signed.agent)
            current = current_policy(conn)
        if current is None:
            raise ApiError(404, "no_policy", "no policy has been uploaded yet")
        etag = f'"{current.sha256}"'
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers={"ETag": etag})
        return SafeJSONResponse(
            {
                "policy": base64.b64encode(current.policy).decode("ascii"),
                "signature": base64.b64encode(current.signature).decode("ascii"),
                "serial": current.serial,
                "sha256": current.sha256,
            },
            headers={"ETag": etag},
        )

    return router


def store_batch(state: CollectorState, agent: AuthenticatedAgent, body: bytes) -> list[Any]:
    """Judge every event, store the good ones in the shared group commit, count the verdicts;
    the results in the batch's order."""
    raw_events = parse_batch(body)
    now_us = state.now_us()
    verdicts, rows = judge_events(
        raw_events, agent_id=agent.agent_id, hostname=agent.hostname, now_us=now_us
    )

    def store(conn: Connection) -> tuple[set[str], dict[str, str]]:
        state.authenticator.consume(conn, agent)  # raises before writing, on a replay
        return insert_events_isolated(conn, rows)

    stored, refused = state.event_commits.run(store)
    results = final_verdicts(verdicts, rows, stored, refused)
    outcomes = Counter(r.status for r in results)
    causes = Counter(r.cause for r in results if r.cause is not None)
    state.metrics.count_events(outcomes, causes)
    if causes:
        log.info("agent %s: %d event(s) rejected %s", agent.agent_id, sum(causes.values()), causes)
    return [r.as_dict() for r in results]


async def heartbeat_response(request: Request, state: CollectorState) -> Response:
    """A heartbeat's answer: the server time, the current policy, the signers' names, the
    fleet's heartbeat interval. The body is read here, not by a dependency (see
    HeartbeatFastPath)."""
    raw = await read_body(request, MAX_HEARTBEAT_BYTES)
    flusher = state.heartbeats
    if flusher is None:  # SQLite: the heartbeat's own transaction, in a worker thread
        answer = await run_in_threadpool(_heartbeat_alone, state, request, raw)
    else:
        answer = await _heartbeat_batched(state, flusher, request, raw)
    if answer.regressed:
        log.warning("host %s reports a lower policy serial than before", answer.agent_id)
    return SafeJSONResponse(
        {
            "server_time": utc_now_iso(),
            "policy": {
                "serial": answer.policy[0] if answer.policy else None,
                "sha256": answer.policy[1] if answer.policy else None,
            },
            # Who the signing keys are (the collector's signer registry), so that
            # `agent status` can name its trusted keys. Names only: trust is the agent's.
            "signers": answer.signers,
            # The fleet's interval, one setting for every agent (it clamps it to 15-3600 s).
            "heartbeat_interval": state.settings.heartbeat_interval,
        }
    )


class HeartbeatFastPath:
    """Pure ASGI, the innermost middleware: ``POST /api/v1/heartbeat`` goes straight to
    :func:`heartbeat_response` when heartbeats go in batches (PostgreSQL), past Starlette's
    router, FastAPI's dependency solving and its exception middleware: together as much CPU
    as the heartbeat's own work (bench/heartbeat_asgi.py). The route stays, for the OpenAPI
    document and for SQLite. The answers are the same: an ApiError becomes the API's JSON
    error (errors.error_response, as its exception handler does); anything else goes up to
    ResponseGuard, a 500, as from the route; the outer middlewares (security headers,
    metrics, nonce purge) see the request as any other."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == HEARTBEAT_PATH:
            state = getattr(scope["app"].state, "collector", None)
            if scope["method"] == "POST" and state is not None and state.heartbeats is not None:
                request = Request(scope, receive)
                try:
                    response = await heartbeat_response(request, state)
                except ApiError as err:
                    response = error_response(err.status, err.error, err.detail, err.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class _HeartbeatAnswer:
    agent_id: str
    regressed: bool
    policy: tuple[int, str] | None
    signers: dict[str, str]


def _heartbeat_alone(state: CollectorState, request: Request, raw: bytes) -> _HeartbeatAnswer:
    """One heartbeat in its own transaction (SQLite), in a worker thread: one connection for
    the signature check and the write (not the signed_request dependency, which checks in a
    thread of its own), committed without waiting for fsync (a heartbeat lost in a power cut
    costs nothing)."""
    with state.db.write(durable=False) as conn:
        signed = verify_signed(state, conn, request, raw, MAX_HEARTBEAT_BYTES)
        record = _heartbeat_record(signed.agent.agent_id, signed.agent.hostname, signed.body)
        state.authenticator.consume(conn, signed.agent)
        if record.hostname != signed.agent.hostname:
            # The one way a host's name changes (events never rename it); the change is
            # a row of the host's history (record_heartbeat).
            set_agent_hostname(conn, signed.agent.agent_id, record.hostname)
        regressed = record_heartbeat(
            conn, record, state.now_us(), int(state.settings.heartbeat_window * 1_000_000)
        )
        current = current_policy_ref(conn)
        names = {s.keyid: s.describe() for s in list_signers(conn)}
    return _HeartbeatAnswer(signed.agent.agent_id, regressed, current, names)


async def _heartbeat_batched(
    state: CollectorState, flusher: HeartbeatFlusher, request: Request, raw: bytes
) -> _HeartbeatAnswer:
    """PostgreSQL: the signature checked here on the event loop with the agent's cached key,
    the write in the replica's next heartbeat batch (storage.heartbeat_batch), which also
    checks that the agent is still enrolled and not revoked, and consumes the nonce."""
    auth = state.authenticator
    headers = request.headers
    agent_id = headers.get(H_AGENT) or ""
    key = auth.cached_key(agent_id)
    if key is None:
        # This agent's first request to this replica (or a malformed header): the full
        # look-up, which answers unknown_agent, revoked_agent, stale_request, bad_signature in
        # that order, and caches the key. A database read: in a worker thread.
        def look_up() -> str:
            with state.db.read() as conn:
                return auth.authenticate(
                    conn, headers, request.method, request_target(request), raw
                ).nonce

        nonce = await run_in_threadpool(look_up)
    else:
        nonce = auth.check_signature(key, headers, request.method, request_target(request), raw)
    require_json(headers)
    body = decode_content(raw, headers.get("content-encoding"), MAX_HEARTBEAT_BYTES)
    # hostname "": the agent's enrolled name, known in the batch
    record = _heartbeat_record(agent_id, "", body)
    outcome = await flusher.submit(PendingHeartbeat(record, nonce, auth.nonce_expiry_us()))
    if outcome.refused is not None:
        if outcome.refused != "replayed_nonce":
            auth.forget(agent_id)  # revoked or deleted since its key was cached
        raise refusal(outcome.refused)
    return _HeartbeatAnswer(agent_id, outcome.regressed, outcome.policy, outcome.signers)


def _heartbeat_record(agent_id: str, enrolled_hostname: str, body: bytes) -> HeartbeatRecord:
    try:
        hb = HeartbeatIn.model_validate(parse_json_body(body))
    except ValidationError as err:
        raise ApiError(422, "invalid_request", validation_detail(err.errors())) from err
    policy = hb.policy
    return HeartbeatRecord(
        agent_id=agent_id,
        hostname=hb.hostname or enrolled_hostname,
        os=hb.os,
        agent_version=hb.agent_version,
        mode=hb.mode,
        policy_id=policy.id if policy else None,
        policy_serial=policy.serial if policy else None,
        policy_sha256=policy.sha256 if policy else None,
        policy_stale=policy.stale if policy else False,
        sensors=hb.sensors,
        spool_depth=hb.spool.depth,
        spool_bytes=hb.spool.bytes,
        dropped=hb.spool.dropped_total(),
        agent_time=hb.time,
        machine_id=hb.machine_id,
        health=hb.health.model_dump() if hb.health is not None else None,
        goodbye_by=hb.goodbye.by if hb.goodbye is not None else None,
    )


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
