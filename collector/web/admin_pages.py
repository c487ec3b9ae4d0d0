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
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from proscribe.collector.storage import admin_actions, audit
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import users as user_store
from proscribe.collector.web import queries as webq
from proscribe.collector.web.security import PageError
from proscribe.collector.web.site import Admin, Site, Visitor

MAX_LABEL = 256
HexId = Annotated[str, Path(max_length=64, pattern=r"^[0-9a-f]{1,64}$")]
UserName = Annotated[str, Path(max_length=128, pattern=user_store.USER_NAME)]


def register(router: APIRouter, site: Site) -> None:

    async def admin_page(
        request: Request, visitor: Visitor, extra: dict[str, Any] | None = None
    ) -> Response:
        def work(conn: Connection) -> dict[str, Any]:
            return {
                "secrets": agent_store.list_enroll_secrets(conn),
                "agents": webq.agents_with_last_seen(conn),
                "audit": audit.list_audit(conn, 15),
                "users": user_store.list_users(conn),
            }

        data = await site.read(request, work)
        context = {
            **data,
            "new_secret": None,
            "credentials": None,
            "notice": request.query_params.get("done", ""),
        }
        context.update(extra or {})
        return site.page("admin.html", visitor, "admin", context)

    def write(request: Request, work: Any) -> Any:
        state = site.state(request)

        def run() -> Any:
            with state.db.write() as conn:
                return work(conn, state.now_us())

        return run_in_threadpool(run)

    @router.get("/admin", include_in_schema=False)
    async def admin_home(request: Request, visitor: Admin) -> Response:
        return await admin_page(request, visitor)

    @router.post("/admin/enroll-secrets", include_in_schema=False)
    async def create_secret(request: Request, visitor: Admin) -> Response:
        form = await site.check_csrf(request, visitor)
        label = form.get("label", "").strip()
        if len(label) > MAX_LABEL or "\x00" in label:
            raise PageError(400, "Bad label", f"A label is at most {MAX_LABEL} characters.")

        def work(conn: Connection, now_us: int) -> tuple[str, str]:
            return admin_actions.create_enroll_secret(
                conn, label, actor=visitor.principal.name, via="dashboard", now_us=now_us
            )

        secret_id, secret = await write(request, work)
        return await admin_page(
            request, visitor, {"new_secret": {"id": secret_id, "secret": secret, "label": label}}
        )

    @router.post("/admin/enroll-secrets/{secret_id}/revoke", include_in_schema=False)
    async def revoke_secret(request: Request, secret_id: HexId, visitor: Admin) -> Response:
        await site.check_csrf(request, visitor)

        def work(conn: Connection, now_us: int) -> bool:
            return admin_actions.revoke_enroll_secret(
                conn, secret_id, actor=visitor.principal.name, via="dashboard", now_us=now_us
            )

        if not await write(request, work):
            raise PageError(404, "Not found", "No active enroll secret with that id.")
        return RedirectResponse("/admin?done=secret-revoked", status_code=303)

    @router.post("/admin/agents/{agent_id}/revoke", include_in_schema=False)
    async def revoke_agent(request: Request, agent_id: HexId, visitor: Admin) -> Response:
        await site.check_csrf(request, visitor)

        def work(conn: Connection, now_us: int) -> bool:
            return admin_actions.revoke_agent(
                conn, agent_id, actor=visitor.principal.name, via="dashboard", now_us=now_us
            )

        if not await write(request, work):
            raise PageError(404, "Not found", "No active agent with that id.")
        return RedirectResponse("/admin?done=agent-revoked", status_code=303)

    @router.post("/admin/users", include_in_schema=False)
    async def add_user(request: Request, visitor: Admin) -> Response:
        form = await site.check_csrf(request, visitor)
        name = form.get("name", "").strip()
        role = form.get("role", "")
        if not user_store.USER_NAME_RE.match(name):
            raise PageError(
                400, "Bad user name", "Use letters, digits, '.', '_', '@' or '-' (at most 128)."
            )
        if role not in user_store.ROLES:
            raise PageError(400, "Bad role", "A role is viewer or admin.")

        def work(conn: Connection, now_us: int) -> tuple[str, str]:
            return admin_actions.add_user(
                conn, name, role, actor=visitor.principal.name, via="dashboard", now_us=now_us
            )

        try:
            password, token = await write(request, work)
        except user_store.UserExists as err:
            raise PageError(409, "User exists", "A user of that name exists already.") from err
        credentials = {"name": name, "password": password, "token": token, "new": True}
        return await admin_page(request, visitor, {"credentials": credentials})

    @router.post("/admin/users/{name}/reset", include_in_schema=False)
    async def reset_user(request: Request, name: UserName, visitor: Admin) -> Response:
        await site.check_csrf(request, visitor)

        def work(conn: Connection, now_us: int) -> tuple[str, str]:
            return admin_actions.reset_user(
                conn, name, actor=visitor.principal.name, via="dashboard", now_us=now_us
            )

        try:
            password, token = await write(request, work)
        except user_store.NoSuchUser as err:
            raise PageError(404, "Not found", "No active user of that name.") from err
        credentials = {"name": name, "password": password, "token": token, "new": False}
        return await admin_page(request, visitor, {"credentials": credentials})

    @router.post("/admin/users/{name}/disable", include_in_schema=False)
    async def disable_user(request: Request, name: UserName, visitor: Admin) -> Response:
        await site.check_csrf(request, visitor)
        if name == visitor.principal.name:
            raise PageError(
                400, "Not yourself", "An admin cannot disable their own account from here."
            )

        def work(conn: Connection, now_us: int) -> int:
            return admin_actions.disable_user(
                conn, name, actor=visitor.principal.name, via="dashboard", now_us=now_us
            )

        try:
            await write(request, work)
        except user_store.NoSuchUser as err:
            raise PageError(404, "Not found", "No active user of that name.") from err
        return RedirectResponse("/admin?done=user-disabled", status_code=303)
