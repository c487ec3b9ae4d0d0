"""Admin actions in the dashboard: create and revoke enroll secrets, revoke an agent, add a
user, reset a user's credentials, disable a user.

Every action is a POST with the session's CSRF token, needs the admin role (a viewer gets the
403 page, and never sees the links), and is appended to the audit hash chain in the same
transaction as the change, exactly as the people's API does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from proscribe.collector.api.deps import ReadConn, StateDep, WriteConn
from proscribe.collector.forward.status import forward_status, recent_dead_letters
from proscribe.collector.storage import admin_actions, audit
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import users as user_store
from proscribe.collector.web import queries as webq
from proscribe.collector.web.security import PageError
from proscribe.collector.web.site import Admin, CheckedForm, Site, Visitor

MAX_LABEL = 256
HexId = Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")]
UserName = Annotated[str, Path(max_length=128, pattern=user_store.USER_NAME)]


def register(router: APIRouter, site: Site) -> None:

    def admin_page(
        request: Request, visitor: Visitor, conn: Connection, extra: dict[str, Any] | None = None
    ) -> Response:
        """The admin page; after a change, ``conn`` is the write transaction that made it, so
        the page shows it (a read opened earlier would still see the state before)."""
        state = request.app.state.collector
        context: dict[str, Any] = {
            "secrets": agent_store.list_enroll_secrets(conn),
            "agents": webq.agents_with_last_seen(conn),
            "audit": audit.list_audit(conn, 15),
            "users": user_store.list_users(conn),
            "forwarding": forward_status(conn, state.settings.forwards, state.now_us()),
            "forward_dead": recent_dead_letters(conn, 10),
            "new_secret": None,
            "credentials": None,
            "notice": request.query_params.get("done", ""),
        }
        context.update(extra or {})
        return site.page("admin.html", visitor, "admin", context)

    @router.get("/admin", include_in_schema=False)
    def admin_home(request: Request, visitor: Admin, conn: ReadConn) -> Response:
        return admin_page(request, visitor, conn)

    @router.post("/admin/enroll-secrets", include_in_schema=False)
    def create_secret(
        request: Request, visitor: Admin, form: CheckedForm, state: StateDep, conn: WriteConn
    ) -> Response:
        label = form.get("label", "").strip()
        if len(label) > MAX_LABEL or "\x00" in label:
            raise PageError(400, "Bad label", f"A label is at most {MAX_LABEL} characters.")
        secret_id, secret = admin_actions.create_enroll_secret(
            conn, label, actor=visitor.principal.name, via="dashboard", now_us=state.now_us()
        )
        new_secret = {"id": secret_id, "secret": secret, "label": label}
        return admin_page(request, visitor, conn, {"new_secret": new_secret})

    @router.post("/admin/enroll-secrets/{secret_id}/revoke", include_in_schema=False)
    def revoke_secret(
        secret_id: HexId, visitor: Admin, _form: CheckedForm, state: StateDep, conn: WriteConn
    ) -> Response:
        if not admin_actions.revoke_enroll_secret(
            conn, secret_id, actor=visitor.principal.name, via="dashboard", now_us=state.now_us()
        ):
            raise PageError(404, "Not found", "No active enroll secret with that id.")
        return RedirectResponse("/admin?done=secret-revoked", status_code=303)

    @router.post("/admin/agents/{agent_id}/revoke", include_in_schema=False)
    def revoke_agent(
        agent_id: HexId, visitor: Admin, _form: CheckedForm, state: StateDep, conn: WriteConn
    ) -> Response:
        if not admin_actions.revoke_agent(
            conn, agent_id, actor=visitor.principal.name, via="dashboard", now_us=state.now_us()
        ):
            raise PageError(404, "Not found", "No active agent with that id.")
        return RedirectResponse("/admin?done=agent-revoked", status_code=303)

    @router.post("/admin/users", include_in_schema=False)
    def add_user(
        request: Request, visitor: Admin, form: CheckedForm, state: StateDep, conn: WriteConn
    ) -> Response:
        name = form.get("name", "").strip()
        role = form.get("role", "")
        if not user_store.USER_NAME_RE.match(name):
            raise PageError(
                400, "Bad user name", "Use letters, digits, '.', '_', '@' or '-' (at most 128)."
            )
        if role not in user_store.ROLES:
            raise PageError(400, "Bad role", "A role is viewer or admin.")
        try:
            password, token = admin_actions.add_user(
                conn,
                name,
                role,
                actor=visitor.principal.name,
                via="dashboard",
                now_us=state.now_us(),
            )
        except user_store.UserExists as err:
            raise PageError(409, "User exists", "A user of that name exists already.") from err
        credentials = {"name": name, "password": password, "token": token, "new": True}
        return admin_page(request, visitor, conn, {"credentials": credentials})

    @router.post("/admin/users/{name}/reset", include_in_schema=False)
    def reset_user(
        request: Request,
        name: UserName,
        visitor: Admin,
        _form: CheckedForm,
        state: StateDep,
        conn: WriteConn,
    ) -> Response:
        try:
            password, token = admin_actions.reset_user(
                conn, name, actor=visitor.principal.name, via="dashboard", now_us=state.now_us()
            )
        except user_store.NoSuchUser as err:
            raise PageError(404, "Not found", "No active user of that name.") from err
        credentials = {"name": name, "password": password, "token": token, "new": False}
        return admin_page(request, visitor, conn, {"credentials": credentials})

    @router.post("/admin/users/{name}/disable", include_in_schema=False)
    def disable_user(
        name: UserName, visitor: Admin, _form: CheckedForm, state: StateDep, conn: WriteConn
    ) -> Response:
        if name == visitor.principal.name:
            raise PageError(
                400, "Not yourself", "An admin cannot disable their own account from here."
            )
        try:
            admin_actions.disable_user(
                conn, name, actor=visitor.principal.name, via="dashboard", now_us=state.now_us()
            )
        except user_store.NoSuchUser as err:
            raise PageError(404, "Not found", "No active user of that name.") from err
        return RedirectResponse("/admin?done=user-disabled", status_code=303)
