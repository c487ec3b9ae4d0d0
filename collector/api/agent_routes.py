"""The agent API: enroll, events, heartbeat, policy (GET). Everything but enroll is signed.

Bodies are read by hand (see :mod:`body`) so the byte caps hold whatever the headers say;
the OpenAPI schema still documents them through ``openapi_extra``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from proscribe.collector.api.agent_auth import (
    AuthenticatedAgent,
    decode_public_key,
    path_and_query,
)
from proscribe.collector.api.body import decode_content, read_body
from proscribe.collector.api.errors import ApiError, validation_detail
from proscribe.collector.api.schema import EnrollRequest, EventIn, HeartbeatIn
from proscribe.collector.api.state import CollectorState, get_state
from proscribe.collector.ingest import final_verdicts, judge_events, parse_batch, parse_json_body
from proscribe.collector.storage.agents import check_enroll_secret, enroll_agent
from proscribe.collector.storage.events import insert_events
from proscribe.collector.storage.hosts import HeartbeatRecord, record_heartbeat
from proscribe.collector.storage.policies import current_policy, current_policy_ref
from proscribe.core.events import MAX_BATCH_BYTES, utc_now_iso

log = logging.getLogger(__name__)

MAX_ENROLL_BYTES = 16 * 1024
MAX_HEARTBEAT_BYTES = 64 * 1024

_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "unknown_agent, revoked_agent, bad_signature, stale_request or "
        "replayed_nonce"
    },
    413: {"description": "body too large"},
    422: {"description": "invalid body"},
}


def _json_body(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_EVENTS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["events"],
                    "additionalProperties": False,
                    "properties": {
                        "events": {
                            "type": "array",
                            "maxItems": 500,
                            "items": EventIn.model_json_schema(),
                        }
                    },
                }
            }
        },
    }
}


async def _signed(
    request: Request, state: CollectorState, limit: int
) -> tuple[bytes, AuthenticatedAgent]:
    raw = await read_body(request, limit)

    def check() -> AuthenticatedAgent:
        with state.db.read() as conn:
            return state.authenticator.authenticate(
                conn,
                request.headers,
                request.method,
                _target(request),
                raw,
            )

    agent = await run_in_threadpool(check)
    body = decode_content(raw, request.headers.get("content-encoding"), limit)
    return body, agent


def build_agent_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["agents"])

    @router.post(
        "/enroll",
        openapi_extra=_json_body(EnrollRequest),
        responses={401: {"description": "bad_secret"}, 429: {"description": "rate limited"}},
    )
    async def enroll(request: Request) -> dict[str, str]:
        """Exchange an enroll secret and the agent's public key for an agent id."""
        state = get_state(request)
        client = request.client.host if request.client else "unknown"
        wait = state.enroll_limiter.check(client)
        if wait:
            raise ApiError(
                429, "rate_limited", "too many enrollments", {"Retry-After": str(int(wait) + 1)}
            )
        body = decode_content(
            await read_body(request, MAX_ENROLL_BYTES),
            request.headers.get("content-encoding"),
            MAX_ENROLL_BYTES,
        )
        try:
            req = EnrollRequest.model_validate(parse_json_body(body))
        except ValidationError as err:
            raise ApiError(422, "invalid_request", validation_detail(err.errors())) from err
        try:
            decode_public_key(req.public_key)
        except ValueError as err:
            raise ApiError(422, "invalid_public_key", str(err)) from err

        def work() -> str:
            with state.db.write() as conn:
                secret_id = check_enroll_secret(conn, req.secret)
                if secret_id is None:
                    raise ApiError(401, "bad_secret", "the enroll secret is wrong or revoked")
                return enroll_agent(
                    conn,
                    public_key=req.public_key,
                    hostname=req.hostname,
                    os_name=req.os,
                    agent_version=req.agent_version,
                    secret_id=secret_id,
                    now_us=state.now_us(),
                )

        agent_id = await run_in_threadpool(work)
        log.info("enrolled agent %s (%s) from %s", agent_id, req.hostname, client)
        return {"agent_id": agent_id}

    @router.post("/events", openapi_extra=_EVENTS_SCHEMA, responses=_AUTH_RESPONSES)
    async def post_events(request: Request) -> JSONResponse:
        """Store a batch; one verdict per event: stored, duplicate or rejected."""
        state = get_state(request)
        body, agent = await _signed(request, state, MAX_BATCH_BYTES)

        def work() -> list[dict[str, Any]]:
            # Parsing a 1 MiB body takes milliseconds: off the event loop, so heartbeats and
            # other requests keep flowing while a big batch is decoded.
            raw_events = parse_batch(body)
            now_us = state.now_us()
            verdicts, rows = judge_events(
                raw_events, agent_id=agent.agent_id, hostname=agent.hostname, now_us=now_us
            )

            def store(conn: Connection) -> set[str]:
                state.authenticator.consume(conn, agent)  # raises before writing, on a replay
                return insert_events(conn, rows)

            stored = state.event_commits.run(store)
            results = final_verdicts(verdicts, rows, stored)
            counts = {"stored": 0, "duplicate": 0, "rejected": 0}
            for r in results:
                counts[r.status] += 1
            state.metrics.count_events(counts["stored"], counts["duplicate"], counts["rejected"])
            return [r.as_dict() for r in results]

        # JSONResponse directly: FastAPI's jsonable_encoder walk over 500 results is
        # measurable at ingest rates, and these dicts are plain JSON already.
        return JSONResponse({"results": await run_in_threadpool(work)})

    @router.post("/heartbeat", openapi_extra=_json_body(HeartbeatIn), responses=_AUTH_RESPONSES)
    async def heartbeat(request: Request) -> JSONResponse:
        """Record the host's state; answers the server time and the current policy serial."""
        state = get_state(request)
        raw = await read_body(request, MAX_HEARTBEAT_BYTES)
        target = _target(request)

        def work() -> dict[str, Any]:
            # One thread hop and one connection for authentication and the write: this is
            # the request every agent makes every minute.
            with state.db.write(durable=False) as conn:
                agent = state.authenticator.authenticate(
                    conn, request.headers, request.method, target, raw
                )
                body = decode_content(
                    raw, request.headers.get("content-encoding"), MAX_HEARTBEAT_BYTES
                )
                record = _heartbeat_record(agent, body)
                state.authenticator.consume(conn, agent)
                regressed = record_heartbeat(
                    conn,
                    record,
                    state.now_us(),
                    int(state.settings.heartbeat_window * 1_000_000),
                )
                current = current_policy_ref(conn)
            if regressed:
                log.warning("host %s reports a lower policy serial than before", agent.agent_id)
            return {
                "server_time": utc_now_iso(),
                "policy": {
                    "serial": current[0] if current else None,
                    "sha256": current[1] if current else None,
                },
            }

        return JSONResponse(await run_in_threadpool(work))

    @router.get(
        "/policy",
        responses={
            **_AUTH_RESPONSES,
            304: {"description": "unchanged"},
            404: {"description": "no_policy"},
        },
    )
    async def get_policy(request: Request) -> Response:
        """The current signed policy bundle (the agent verifies it with its own trust)."""
        state = get_state(request)
        _body, agent = await _signed(request, state, 0)

        def work() -> Any:
            with state.db.write(durable=False) as conn:
                state.authenticator.consume(conn, agent)
                return current_policy(conn)

        current = await run_in_threadpool(work)
        if current is None:
            raise ApiError(404, "no_policy", "no policy has been uploaded yet")
        etag = f'"{current.sha256}"'
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse(
            {
                "policy": base64.b64encode(current.policy).decode("ascii"),
                "signature": base64.b64encode(current.signature).decode("ascii"),
                "serial": current.serial,
                "sha256": current.sha256,
            },
            headers={"ETag": etag},
        )

    return router


def _target(request: Request) -> str:
    return path_and_query(
        request.scope.get("raw_path") or request.url.path,
        request.scope.get("query_string", b""),
    )


def _heartbeat_record(agent: AuthenticatedAgent, body: bytes) -> HeartbeatRecord:
    try:
        hb = HeartbeatIn.model_validate(parse_json_body(body))
    except ValidationError as err:
        raise ApiError(422, "invalid_request", validation_detail(err.errors())) from err
    policy = hb.policy
    return HeartbeatRecord(
        agent_id=agent.agent_id,
        hostname=hb.hostname or agent.hostname,
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
    )


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
