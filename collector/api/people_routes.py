"""The people's API: violations, host coverage, policy upload, enroll secrets, agents, audit.

Role matrix: ``viewer`` reads violations and hosts; ``admin`` additionally uploads policy,
manages enroll secrets, revokes agents and reads the audit log. Every admin write appends to
the audit hash chain in the same transaction as the change (the ``WriteConn`` dependency
commits both, or neither).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from proscribe.collector.api.deps import (
    AdminDep,
    ReadConn,
    StateDep,
    ViewerDep,
    ViolationQuery,
    WriteConn,
)
from proscribe.collector.api.errors import ApiError, error_responses, invalid_parameter
from proscribe.collector.api.responses import SafeJSONResponse
from proscribe.collector.api.schema import PolicyUpload, PublicKeyText
from proscribe.collector.compliance import FleetHost, fleet
from proscribe.collector.csvexport import violations_csv
from proscribe.collector.policy_upload import VerifiedUpload, verify_upload
from proscribe.collector.storage import admin_actions, audit, queries, to_us
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage.inventory import InventoryError, parse_csv
from proscribe.collector.storage.policies import (
    StoredPolicy,
    current_policy,
    highest_serial,
    store_policy,
)
from proscribe.collector.storage.signers import SignerExists, list_signers
from proscribe.core.errors import KeyFileError
from proscribe.core.policy.export import export_policy
from proscribe.core.policy.keys import key_id, parse_public_key
from proscribe.core.policy.loader import load_policy

_READ_ERRORS = error_responses(401, 403, 422)
_ADMIN_ERRORS = error_responses(401, 403, 422)


def _not_bool(value: Any) -> Any:
    """JSON's true is not a count (pydantic's lax mode would read it as 1); 12.0 is."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


# Stated in the schema (not only checked by a validator), so clients know NUL is refused.
_NO_NUL = r"^[^\x00]*$"


class InventoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: Annotated[str, Field(max_length=32 * 1024 * 1024, pattern=_NO_NUL)]


class SignerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: PublicKeyText
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=_NO_NUL)]
    role: Annotated[str, Field(max_length=256, pattern=_NO_NUL)] = ""


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, Field(max_length=256, pattern=_NO_NUL)] = ""
    max_uses: Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_not_bool)] | None = None
    # Seconds from now; the secret stops working then.
    expires_in: (
        Annotated[int, Field(ge=1, le=10 * 365 * 86400), BeforeValidator(_not_bool)] | None
    ) = None
    host_pattern: Annotated[str, Field(min_length=1, max_length=256, pattern=_NO_NUL)] | None = None


def verified_upload(upload: PolicyUpload, state: StateDep) -> tuple[VerifiedUpload, bytes, bytes]:
    """The uploaded bundle checked against the collector's trust (422 otherwise), before the
    write transaction starts: signature checks never hold the database's write lock."""
    try:
        data = base64.b64decode(upload.policy, validate=True)
        sig = base64.b64decode(upload.signature, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(422, "invalid_request", "policy and signature must be base64") from err
    return verify_upload(state.settings, data, sig), data, sig


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def _host_json(f: FleetHost) -> dict[str, Any]:
    h = f.host
    return {
        "agent_id": f.agent_id,
        "hostname": f.hostname,
        "compliance": f.state.as_dict(),
        "inventory": f.inventory.as_dict() if f.inventory else None,
        "matched_by": f.matched_by,
        "revoked": f.revoked,
        "os": h.os if h else None,
        "agent_version": h.agent_version if h else None,
        "mode": h.mode if h else None,
        "last_seen": h.last_seen_us / 1e6 if h else None,
        "last_seen_iso": _iso(h.last_seen_us) if h else None,
        "stale": f.state.state == "stale",
        "policy": None
        if h is None
        else {
            "id": h.policy_id,
            "serial": h.policy_serial,
            "sha256": h.policy_sha256,
            "stale": h.policy_stale,
        },
        "serial_regressed": h.serial_regressed if h else False,
        "spool_depth": h.spool_depth if h else 0,
        "dropped": h.dropped if h else 0,
        "sensors": h.sensors if h else {},
        "health": h.health if h else None,
        "machine_id": h.machine_id if h else None,
        "stopped": None
        if h is None or h.goodbye_us is None
        else {"at": _iso(h.goodbye_us), "by": h.goodbye_by},
        "problems": list(f.state.reasons),
    }


def build_people_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get(
        "/violations",
        tags=["reports"],
        responses={
            200: {
                "description": "JSON page (next_cursor) or CSV (X-Next-Cursor header)",
                "content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}},
            },
            **_READ_ERRORS,
        },
    )
    def violations(
        _principal: ViewerDep,
        flt: ViolationQuery,
        conn: ReadConn,
        cursor: Annotated[
            str | None,
            Query(max_length=40, pattern=queries.CURSOR_PATTERN, description="next_cursor"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 100,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        """Violations newest first; ``next_cursor`` (JSON) or ``X-Next-Cursor`` (CSV) pages.
        Filters as in ``proscribe.collector.filters`` (empty = no filter)."""
        try:
            page = queries.list_violations(conn, flt, cursor=cursor, limit=limit)
        except queries.BadCursor as err:
            raise invalid_parameter("query", "cursor", "not a cursor this server made") from err
        if format == "csv":
            headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else {}
            return Response(
                violations_csv(page.items),
                media_type="text/csv; charset=utf-8",
                headers={**headers, "Content-Disposition": 'attachment; filename="violations.csv"'},
            )
        return SafeJSONResponse({"items": page.items, "next_cursor": page.next_cursor})

    @router.get("/hosts", tags=["reports"], responses=error_responses(401, 403))
    def hosts(_principal: ViewerDep, state: StateDep, conn: ReadConn) -> dict[str, Any]:
        """Every host (enrolled agents and inventory entries) with its compliance state
        (enforcing, monitoring, degraded, stopped, stale, never_enrolled, revoked) and why,
        its last heartbeat and health, and its inventory entry; times are ISO 8601."""
        found = fleet(conn, now_us=state.now_us(), window_us=to_us(state.settings.heartbeat_window))
        items = [_host_json(f) for f in found.hosts]
        return {
            "hosts": items,
            "total": len(items),
            "states": found.counts(),
            "in_scope": "inventory" if found.has_inventory else "enrolled",
            "current_serial": found.current_serial,
            "required_sensors": list(found.required),
            "stale": sum(1 for f in found.hosts if f.state.state == "stale"),
            "heartbeat_window": state.settings.heartbeat_window,
        }

    @router.put(
        "/policy",
        tags=["admin"],
        responses=error_responses(
            400,
            401,
            403,
            409,
            422,
            s400="the body is not JSON (not UTF-8, cut short)",
            s409="serial_not_higher",
            s422="invalid_request, no_trust_configured or policy_rejected (signatures, syntax)",
        ),
    )
    def put_policy(
        principal: AdminDep,
        upload: Annotated[tuple[VerifiedUpload, bytes, bytes], Depends(verified_upload)],
        state: StateDep,
        conn: WriteConn,
    ) -> dict[str, Any]:
        """Upload a signed bundle; it must verify against the collector's trust."""
        verified, data, sig = upload
        now_us = state.now_us()
        highest = highest_serial(conn)
        if highest is not None and verified.serial <= highest:
            raise ApiError(
                409,
                "serial_not_higher",
                f"serial {verified.serial} is not higher than the current {highest}",
            )
        stored = StoredPolicy(
            verified.serial, verified.policy_id, verified.sha256, data, sig, now_us, principal.name
        )
        try:
            store_policy(conn, stored)
        except IntegrityError as err:  # a concurrent upload of the same serial won
            raise ApiError(409, "serial_not_higher", "another upload took this serial") from err
        audit.append_audit(
            conn,
            actor=principal.name,
            action="policy.upload",
            target=f"{verified.policy_id}@{verified.serial}",
            detail={"sha256": verified.sha256},
            now_us=now_us,
        )
        return {"id": verified.policy_id, "serial": verified.serial, "sha256": verified.sha256}

    @router.get(
        "/policy/export",
        tags=["reports"],
        responses={
            200: {
                "description": "the blocked domains of the policy in force, as a resolver loads",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(401, 403, 404, 422, s404="no_policy: none uploaded yet"),
        },
    )
    def export_policy_in_force(
        _principal: ViewerDep,
        conn: ReadConn,
        format: Literal["rpz", "unbound", "dnsmasq", "hosts", "adblock"],
    ) -> Response:
        """The current policy's ``block`` domain rules for a central resolver (RPZ for BIND,
        Unbound, PowerDNS and Knot; unbound; dnsmasq; hosts; adblock for AdGuard Home and
        Pi-hole), so devices without the agent are held to the same ban. A resolver fetches
        it with a viewer's bearer token; ``ETag`` is the policy's sha256 and serial."""
        stored = current_policy(conn)
        if stored is None:
            raise ApiError(404, "no_policy", "no policy has been uploaded yet")
        policy = load_policy(stored.policy, f"policy serial {stored.serial}")
        tag = f'"{stored.sha256}-{stored.serial}-{format}"'
        return Response(
            export_policy(policy, format),
            media_type="text/plain; charset=utf-8",
            headers={"ETag": tag, "X-Policy-Serial": str(stored.serial)},
        )

    @router.get("/enroll-secrets", tags=["admin"], responses=error_responses(401, 403))
    def list_secrets(_principal: AdminDep, conn: ReadConn) -> dict[str, Any]:
        """Enroll secrets (ids and labels only; the secrets themselves are not stored)."""
        return {
            "secrets": [
                {
                    "id": s.secret_id,
                    "label": s.label,
                    "created": s.created_us / 1e6,
                    "revoked": None if s.revoked_us is None else s.revoked_us / 1e6,
                    "max_uses": s.max_uses,
                    "uses": s.uses,
                    "expires": _iso(s.expires_us),
                    "host_pattern": s.host_pattern,
                }
                for s in agent_store.list_enroll_secrets(conn)
            ]
        }

    @router.post(
        "/enroll-secrets",
        tags=["admin"],
        responses=error_responses(400, 401, 403, 422, s400="the body is not JSON"),
    )
    def create_secret(
        body: SecretIn, principal: AdminDep, state: StateDep, conn: WriteConn
    ) -> dict[str, str]:
        """Create an enroll secret; the answer is the only time it is shown."""
        now_us = state.now_us()
        limits = agent_store.SecretLimits(
            max_uses=body.max_uses,
            expires_us=None if body.expires_in is None else now_us + body.expires_in * 1_000_000,
            host_pattern=body.host_pattern,
        )
        secret_id, secret = admin_actions.create_enroll_secret(
            conn, body.label, actor=principal.name, via="api", now_us=now_us, limits=limits
        )
        return {"id": secret_id, "secret": secret}

    @router.delete(
        "/enroll-secrets/{secret_id}", tags=["admin"], responses=error_responses(401, 403, 404, 422)
    )
    def revoke_secret(
        secret_id: Annotated[str, Path(max_length=32, pattern=r"^[0-9a-f]{1,32}$")],
        principal: AdminDep,
        state: StateDep,
        conn: WriteConn,
    ) -> dict[str, str]:
        """Revoke an enroll secret (agents already enrolled keep working)."""
        if not admin_actions.revoke_enroll_secret(
            conn, secret_id, actor=principal.name, via="api", now_us=state.now_us()
        ):
            raise ApiError(404, "not_found", "no active enroll secret with that id")
        return {"id": secret_id, "status": "revoked"}

    @router.get("/inventory", tags=["reports"], responses=error_responses(401, 403))
    def get_inventory(_principal: ViewerDep, state: StateDep, conn: ReadConn) -> dict[str, Any]:
        """The imported inventory, each entry with its match (by machine id or hostname) and
        compliance state; enrolled agents not in it are listed apart."""
        found = fleet(conn, now_us=state.now_us(), window_us=to_us(state.settings.heartbeat_window))
        listed = [_host_json(f) for f in found.hosts if f.inventory is not None]
        outside = [
            _host_json(f)
            for f in found.hosts
            if f.inventory is None and f.agent_id is not None and not f.revoked
        ]
        return {"inventory": listed, "not_in_inventory": outside if found.has_inventory else []}

    @router.put(
        "/inventory",
        tags=["admin"],
        responses=error_responses(400, 401, 403, 422, s422="a row of the CSV is wrong (which)"),
    )
    def put_inventory(
        body: InventoryIn, principal: AdminDep, state: StateDep, conn: WriteConn
    ) -> dict[str, Any]:
        """Replace the inventory with a CSV (hostname,asset_id,owner,group[,machine_id])."""
        try:
            entries = parse_csv(body.csv.removeprefix("\ufeff"), "csv")
        except InventoryError as err:
            raise ApiError(422, "invalid_inventory", str(err)) from err
        count = admin_actions.import_inventory(
            conn, entries, actor=principal.name, via="api", now_us=state.now_us()
        )
        return {"imported": count}

    @router.get("/signers", tags=["reports"], responses=error_responses(401, 403))
    def get_signers(_principal: ViewerDep, conn: ReadConn) -> dict[str, Any]:
        """Signing keys by name (the registry names keys; trust is decided elsewhere)."""
        return {
            "signers": [
                {
                    "keyid": s.keyid,
                    "name": s.name,
                    "role": s.role,
                    "added_by": s.added_by,
                    "added": _iso(s.added_us),
                    "retired": _iso(s.retired_us),
                }
                for s in list_signers(conn)
            ]
        }

    @router.post("/signers", tags=["admin"], responses=error_responses(400, 401, 403, 409, 422))
    def post_signer(
        body: SignerIn, principal: AdminDep, state: StateDep, conn: WriteConn
    ) -> dict[str, str]:
        """Name a signing key, given as ``ed25519:BASE64``."""
        if not body.public_key.startswith("ed25519:"):
            raise invalid_parameter("body", "public_key", "must be 'ed25519:BASE64'")
        try:
            keyid = key_id(parse_public_key(body.public_key))
        except KeyFileError as err:
            raise invalid_parameter("body", "public_key", str(err).splitlines()[0]) from err
        try:
            admin_actions.add_signer(
                conn, keyid, name=body.name, role=body.role, actor=principal.name, via="api",
                now_us=state.now_us(),
            )  # fmt: skip
        except SignerExists as err:
            raise ApiError(409, "conflict", "that key is registered already") from err
        return {"keyid": keyid, "name": body.name}

    @router.delete(
        "/signers/{keyid}", tags=["admin"], responses=error_responses(401, 403, 404, 422)
    )
    def retire_signer(
        keyid: Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{64}$")],
        principal: AdminDep,
        state: StateDep,
        conn: WriteConn,
    ) -> dict[str, str]:
        """Retire a signer (its name stays on the record of what it signed)."""
        if not admin_actions.retire_signer(
            conn, keyid, actor=principal.name, via="api", now_us=state.now_us()
        ):
            raise ApiError(404, "not_found", "no active signer with that key id")
        return {"keyid": keyid, "status": "retired"}

    @router.get("/bans", tags=["admin"], responses=error_responses(401, 403))
    def list_bans(_principal: AdminDep, conn: ReadConn) -> dict[str, Any]:
        """Machine bans: a revoked agent's machine may not enroll again until lifted."""
        return {
            "bans": [
                {
                    "machine_id": b.machine_id,
                    "agent_id": b.agent_id,
                    "reason": b.reason,
                    "banned": _iso(b.banned_us),
                    "banned_by": b.banned_by,
                    "lifted": _iso(b.lifted_us),
                    "lifted_by": b.lifted_by,
                }
                for b in agent_store.list_bans(conn)
            ]
        }

    @router.delete(
        "/bans/{machine_id}", tags=["admin"], responses=error_responses(401, 403, 404, 422)
    )
    def lift_ban(
        machine_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]{8,64}$")],
        principal: AdminDep,
        state: StateDep,
        conn: WriteConn,
    ) -> dict[str, str]:
        """Lift a machine ban (it enrolls again with a new key; the revoked key stays refused)."""
        if not admin_actions.lift_ban(
            conn, machine_id, actor=principal.name, via="api", now_us=state.now_us()
        ):
            raise ApiError(404, "not_found", "no active ban on that machine id")
        return {"machine_id": machine_id, "status": "lifted"}

    @router.post(
        "/agents/{agent_id}/revoke", tags=["admin"], responses=error_responses(401, 403, 404, 422)
    )
    def revoke_agent(
        agent_id: Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")],
        principal: AdminDep,
        state: StateDep,
        conn: WriteConn,
    ) -> dict[str, str]:
        """Revoke an agent's key; it must enroll again (its spool is kept on the host)."""
        if not admin_actions.revoke_agent(
            conn, agent_id, actor=principal.name, via="api", now_us=state.now_us()
        ):
            raise ApiError(404, "not_found", "no active agent with that id")
        return {"agent_id": agent_id, "status": "revoked"}

    @router.get("/audit", tags=["admin"], responses=_ADMIN_ERRORS)
    def audit_log(
        _principal: AdminDep,
        conn: ReadConn,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The newest audit entries and whether the whole hash chain verifies."""
        entries, verdict = audit.list_audit(conn, limit), audit.verify_chain(conn)
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
