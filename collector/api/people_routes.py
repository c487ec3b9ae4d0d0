"""The people's API: violations, host coverage, policy upload, enroll secrets, agents, audit.

Role matrix: ``viewer`` reads violations and hosts; ``admin`` additionally uploads policy,
manages enroll secrets, revokes agents and reads the audit log. Every admin write appends to
the audit hash chain in the same transaction as the change.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from proscribe.collector.api.errors import ApiError
from proscribe.collector.api.people_auth import require_role
from proscribe.collector.api.schema import PolicyUpload, clean_text
from proscribe.collector.api.state import get_state
from proscribe.collector.csvexport import violations_csv
from proscribe.collector.policy_upload import verify_upload
from proscribe.collector.storage import admin_actions, audit, queries, to_us
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage.policies import StoredPolicy, highest_serial, store_policy
from proscribe.collector.storage.users import Principal
from proscribe.collector.timespec import parse_moment
from proscribe.core.events import EVENT_ACTIONS, KINDS, SEVERITIES

FilterText = Annotated[
    str | None,
    Query(max_length=4096),
    AfterValidator(lambda v: None if v is None else clean_text(v)),
]

viewer = require_role("viewer")
admin = require_role("admin")


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, Field(max_length=256), AfterValidator(clean_text)] = ""


def _moment(name: str, value: str | None, now: float) -> int | None:
    if value is None:
        return None
    try:
        return to_us(parse_moment(value, now))
    except ValueError as err:
        raise ApiError(422, "invalid_request", f"{name}: {err}") from err


def build_people_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/violations", tags=["reports"])
    async def violations(
        request: Request,
        principal: Annotated[Principal, Depends(viewer)],
        since: FilterText = None,
        until: FilterText = None,
        host: FilterText = None,
        user: FilterText = None,
        rule: FilterText = None,
        kind: Literal[KINDS] | None = None,  # type: ignore[valid-type]
        action: Literal[EVENT_ACTIONS] | None = None,  # type: ignore[valid-type]
        severity: Literal[SEVERITIES] | None = None,  # type: ignore[valid-type]
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 100,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        """Violations newest first; ``next_cursor`` (JSON) or ``X-Next-Cursor`` (CSV) pages."""
        state = get_state(request)
        now = state.clock()
        flt = queries.ViolationFilter(
            since_us=_moment("since", since, now),
            until_us=_moment("until", until, now),
            host=host,
            user=user,
            rule=rule,
            kind=kind,
            action=action,
            severity=severity,
        )

        def work() -> queries.ViolationPage:
            with state.db.read() as conn:
                return queries.list_violations(conn, flt, cursor=cursor, limit=limit)

        try:
            page = await run_in_threadpool(work)
        except queries.BadCursor as err:
            raise ApiError(422, "invalid_request", "cursor is not valid") from err
        if format == "csv":
            headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else {}
            return Response(
                violations_csv(page.items),
                media_type="text/csv; charset=utf-8",
                headers={**headers, "Content-Disposition": 'attachment; filename="violations.csv"'},
            )
        return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})

    @router.get("/hosts", tags=["reports"])
    async def hosts(
        request: Request, principal: Annotated[Principal, Depends(viewer)]
    ) -> dict[str, Any]:
        """Coverage: every host with last seen, policy serial and what is wrong with it."""
        state = get_state(request)

        def work() -> list[queries.HostCoverage]:
            with state.db.read() as conn:
                return queries.list_hosts(
                    conn,
                    now_us=state.now_us(),
                    heartbeat_window_us=to_us(state.settings.heartbeat_window),
                )

        rows = await run_in_threadpool(work)
        items = [
            {
                "agent_id": h.agent_id,
                "hostname": h.hostname,
                "os": h.os,
                "agent_version": h.agent_version,
                "mode": h.mode,
                "last_seen": h.last_seen_us / 1e6,
                "stale": h.stale,
                "policy": {
                    "id": h.policy_id,
                    "serial": h.policy_serial,
                    "sha256": h.policy_sha256,
                    "stale": h.policy_stale,
                },
                "serial_regressed": h.serial_regressed,
                "spool_depth": h.spool_depth,
                "dropped": h.dropped,
                "sensors": h.sensors,
                "problems": h.problems,
            }
            for h in rows
        ]
        return {
            "hosts": items,
            "total": len(items),
            "stale": sum(1 for h in rows if h.stale),
            "heartbeat_window": state.settings.heartbeat_window,
        }

    @router.put(
        "/policy",
        tags=["admin"],
        responses={409: {"description": "serial not higher"}, 422: {"description": "rejected"}},
    )
    async def put_policy(
        request: Request, upload: PolicyUpload, principal: Annotated[Principal, Depends(admin)]
    ) -> dict[str, Any]:
        """Upload a signed bundle; it must verify against the collector's trust."""
        state = get_state(request)
        try:
            data = base64.b64decode(upload.policy, validate=True)
            sig = base64.b64decode(upload.signature, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ApiError(422, "invalid_request", "policy and signature must be base64") from err
        verified = await run_in_threadpool(verify_upload, state.settings, data, sig)

        def work() -> None:
            now_us = state.now_us()
            with state.db.write() as conn:
                highest = highest_serial(conn)
                if highest is not None and verified.serial <= highest:
                    raise ApiError(
                        409,
                        "serial_not_higher",
                        f"serial {verified.serial} is not higher than the current {highest}",
                    )
                store_policy(
                    conn,
                    StoredPolicy(
                        verified.serial,
                        verified.policy_id,
                        verified.sha256,
                        data,
                        sig,
                        now_us,
                        principal.name,
                    ),
                )
                audit.append_audit(
                    conn,
                    actor=principal.name,
                    action="policy.upload",
                    target=f"{verified.policy_id}@{verified.serial}",
                    detail={"sha256": verified.sha256},
                    now_us=now_us,
                )

        try:
            await run_in_threadpool(work)
        except IntegrityError as err:  # a concurrent upload of the same serial won
            raise ApiError(409, "serial_not_higher", "another upload took this serial") from err
        return {"id": verified.policy_id, "serial": verified.serial, "sha256": verified.sha256}

    @router.get("/enroll-secrets", tags=["admin"])
    async def list_secrets(
        request: Request, principal: Annotated[Principal, Depends(admin)]
    ) -> dict[str, Any]:
        """Enroll secrets (ids and labels only; the secrets themselves are not stored)."""
        state = get_state(request)

        def work() -> list[agent_store.EnrollSecretInfo]:
            with state.db.read() as conn:
                return agent_store.list_enroll_secrets(conn)

        return {
            "secrets": [
                {
                    "id": s.secret_id,
                    "label": s.label,
                    "created": s.created_us / 1e6,
                    "revoked": None if s.revoked_us is None else s.revoked_us / 1e6,
                }
                for s in await run_in_threadpool(work)
            ]
        }

    @router.post("/enroll-secrets", tags=["admin"])
    async def create_secret(
        request: Request, body: SecretIn, principal: Annotated[Principal, Depends(admin)]
    ) -> dict[str, str]:
        """Create an enroll secret; the answer is the only time it is shown."""
        state = get_state(request)

        def work() -> tuple[str, str]:
            now_us = state.now_us()
            with state.db.write() as conn:
                return admin_actions.create_enroll_secret(
                    conn, body.label, actor=principal.name, via="api", now_us=now_us
                )

        secret_id, secret = await run_in_threadpool(work)
        return {"id": secret_id, "secret": secret}

    @router.delete("/enroll-secrets/{secret_id}", tags=["admin"])
    async def revoke_secret(
        request: Request,
        secret_id: Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]{1,32}$")],
        principal: Annotated[Principal, Depends(admin)],
    ) -> dict[str, str]:
        """Revoke an enroll secret (agents already enrolled keep working)."""
        state = get_state(request)

        def work() -> bool:
            now_us = state.now_us()
            with state.db.write() as conn:
                return admin_actions.revoke_enroll_secret(
                    conn, secret_id, actor=principal.name, via="api", now_us=now_us
                )

        if not await run_in_threadpool(work):
            raise ApiError(404, "not_found", "no active enroll secret with that id")
        return {"id": secret_id, "status": "revoked"}

    @router.post("/agents/{agent_id}/revoke", tags=["admin"])
    async def revoke_agent(
        request: Request,
        agent_id: Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")],
        principal: Annotated[Principal, Depends(admin)],
    ) -> dict[str, str]:
        """Revoke an agent's key; it must enroll again (its spool is kept on the host)."""
        state = get_state(request)

        def work() -> bool:
            now_us = state.now_us()
            with state.db.write() as conn:
                return admin_actions.revoke_agent(
                    conn, agent_id, actor=principal.name, via="api", now_us=now_us
                )

        if not await run_in_threadpool(work):
            raise ApiError(404, "not_found", "no active agent with that id")
        return {"agent_id": agent_id, "status": "revoked"}

    @router.get("/audit", tags=["admin"])
    async def audit_log(
        request: Request,
        principal: Annotated[Principal, Depends(admin)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The newest audit entries and whether the whole hash chain verifies."""
        state = get_state(request)

        def work() -> tuple[list[dict[str, Any]], audit.ChainVerdict]:
            with state.db.read() as conn:
                return audit.list_audit(conn, limit), audit.verify_chain(conn)

        entries, verdict = await run_in_threadpool(work)
        return {
            "entries": entries,
            "chain": {
                "ok": verdict.ok,
                "rows": verdict.rows,
                "head": verdict.head,
                "broken_at": verdict.broken_at,
                "reason": verdict.reason,
            },
        }

    return router
