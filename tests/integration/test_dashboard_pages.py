"""Dashboard access control in-process: login, sessions, roles on every page and action,
CSRF on every form, security headers on every answer (error pages included)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from proscribe.collector.storage.tables import agents, audit_log, enroll_secrets
from proscribe.collector.web.security import CONTENT_SECURITY_POLICY
from proscribe.collector.web.session import SESSION_COOKIE, SessionSigner
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env

VIEWER_PAGES = (
    "/",
    "/?period=90d",
    "/violations",
    "/violations?since=30d&rule=deepseek-desktop&kind=process",
    "/violations/export.csv",
    "/violations/export.json",
    "/hosts",
    "/hosts?show=problems",
    "/policy",
    "/report",
    "/report/export.html",
    "/report/export.csv",
    "/report/export.json",
)


@pytest.fixture
def env(tmp_path: Path, env_templates: EnvTemplates) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates)


def assert_headers(reply: object) -> None:
    headers = reply.headers  # type: ignore[attr-defined]
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


def test_every_page_needs_a_session(env: DashboardEnv) -> None:
    for path in (*VIEWER_PAGES, "/admin"):
        reply = env.client.get(path, follow_redirects=False)
        assert reply.status_code == 303, path
        assert reply.headers["location"].startswith("/login?next=%2F"), path
        assert_headers(reply)
    for path in ("/admin/enroll-secrets", "/logout"):
        reply = env.client.post(path, data={"csrf": "x"}, follow_redirects=False)
        assert reply.status_code == 303 and "/login" in reply.headers["location"]


def test_viewer_reads_every_page_with_headers_and_never_sees_admin(env: DashboardEnv) -> None:
    agent = env.enroll()
    env.heartbeat(agent)
    env.post_events(agent, [event()])
    env.login("vera")
    for path in (*VIEWER_PAGES, f"/hosts/{agent[0]}"):
        reply = env.client.get(path)
        assert reply.status_code == 200, (path, reply.text[:300])
        assert_headers(reply)
        assert 'href="/admin"' not in reply.text
        assert "<script" not in reply.text.lower() or path.endswith((".csv", ".json"))
        assert "style=" not in reply.text or path.startswith("/report/export")
    reply = env.client.get("/admin")
    assert reply.status_code == 403
    assert_headers(reply)
    assert "Not allowed" in reply.text


def test_viewer_cannot_perform_admin_actions_even_with_a_valid_csrf(env: DashboardEnv) -> None:
    agent_id, _key = env.enroll()
    env.login("vera")
    csrf = env.csrf("/")  # the viewer's own, valid token
    for path in (
        "/admin/enroll-secrets",
        f"/admin/agents/{agent_id}/revoke",
        "/admin/enroll-secrets/abc123/revoke",
        "/admin/users",
        "/admin/users/adam/reset",
        "/admin/users/adam/disable",
    ):
        reply = env.client.post(
            path, data={"csrf": csrf, "label": "x", "name": "eve", "role": "admin"}
        )
        assert reply.status_code == 403, path
    with env.db.read() as conn:
        assert conn.execute(agents.select().where(agents.c.revoked_us.is_not(None))).all() == []
        assert len(conn.execute(enroll_secrets.select()).all()) == 1


def test_admin_actions_need_csrf_and_are_audited(env: DashboardEnv) -> None:
    agent_id, _key = env.enroll()
    env.login("adam")
    page = env.client.get("/")
    assert 'href="/admin"' in page.text
    assert env.client.post("/admin/enroll-secrets", data={"label": "x"}).status_code == 403
    bad = env.client.post("/admin/enroll-secrets", data={"label": "x", "csrf": "forged"})
    assert bad.status_code == 403
    csrf = env.csrf("/admin")
    made = env.client.post("/admin/enroll-secrets", data={"label": "kiosks", "csrf": csrf})
    assert made.status_code == 200
    secret = re.search(r"<code>(pse_[^<]+)</code>", made.text)
    assert secret is not None
    assert made.headers["cache-control"] == "no-store"
    revoked = env.client.post(
        f"/admin/agents/{agent_id}/revoke", data={"csrf": csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303
    again = env.client.post(f"/admin/agents/{agent_id}/revoke", data={"csrf": csrf})
    assert again.status_code == 404
    with env.db.read() as conn:
        actions = [r.action for r in conn.execute(audit_log.select().order_by(audit_log.c.seq))]
        assert actions == ["enroll_secret.create", "agent.revoke"]
        row = conn.execute(agents.select().where(agents.c.agent_id == agent_id)).one()
        assert row.revoked_us is not None
    # The secret shown once really enrolls an agent.
    env.secret = secret.group(1)
    env.enroll("kiosk-7")


def test_login_refuses_bad_passwords_forged_forms_and_open_redirects(env: DashboardEnv) -> None:
    page = env.client.get("/login")
    assert_headers(page)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    wrong = env.client.post(
        "/login", data={"username": "vera", "password": "nope", "csrf": csrf.group(1)}
    )
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    unknown = env.client.post(
        "/login", data={"username": "nobody", "password": "nope", "csrf": csrf.group(1)}
    )
    assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text
    fresh = TestClient(env.app, base_url="http://127.0.0.1")  # no pre-login cookie
    forged = fresh.post(
        "/login",
        data={"username": "vera", "password": env.passwords["vera"], "csrf": csrf.group(1)},
    )
    assert forged.status_code == 403
    good = env.client.post(
        "/login",
        data={
            "username": "vera",
            "password": env.passwords["vera"],
            "csrf": csrf.group(1),
            "next": "//evil.example/phish",
        },
        follow_redirects=False,
    )
    assert good.status_code == 303 and good.headers["location"] == "/"
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # plain HTTP on loopback; Secure is set under TLS


def test_tampered_or_expired_session_cookies_are_refused(env: DashboardEnv) -> None:
    env.login("vera")
    cookie = env.client.cookies.get(SESSION_COOKIE)
    assert cookie is not None
    user_id, rest = cookie.split(".", 1)
    env.client.cookies.clear()
    env.client.cookies.set(SESSION_COOKIE, f"{int(user_id) + 1}.{rest}")  # become the admin?
    assert env.client.get("/admin", follow_redirects=False).status_code == 303
    env.client.cookies.clear()
    env.client.cookies.set(SESSION_COOKIE, cookie)
    assert env.client.get("/").status_code == 200
    env.clock.now += 9 * 3600  # past the 8 h lifetime
    assert env.client.get("/", follow_redirects=False).status_code == 303
    signer = SessionSigner(b"k" * 32, lifetime_s=60)
    token = signer.issue(1, 1000.0)
    assert signer.check(token, 1059.0) is not None
    assert signer.check(token, 1060.0) is None
    assert SessionSigner(b"j" * 32).check(token, 1000.0) is None


def test_logout_needs_csrf_and_ends_the_session(env: DashboardEnv) -> None:
    env.login("vera")
    assert env.client.post("/logout", data={"csrf": "forged"}).status_code == 403
    csrf = env.csrf("/")
    out = env.client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert env.client.get("/", follow_redirects=False).status_code == 303


def test_bad_filters_are_a_400_page_not_a_500(env: DashboardEnv) -> None:
    env.login("vera")
    for path in (
        "/violations?since=yesterday",
        "/violations?kind=nonsense",
        "/violations?cursor=!!!",
        "/?period=1y",
        "/report?since=1d&until=30d",
        "/report?serial=99",
        "/hosts/not-an-agent",
        "/static/nope.css",
        "/violations?host=a%00b",
    ):
        reply = env.client.get(path)
        assert 400 <= reply.status_code < 500, (path, reply.status_code)
        assert_headers(reply)


def test_disabled_user_loses_token_password_and_session_at_once(env: DashboardEnv) -> None:
    from proscribe.collector.storage.users import disable_user, issue_token, reset_credentials

    env.login("vera")
    assert env.client.get("/violations").status_code == 200
    with env.db.write() as conn:
        user_id = conn.exec_driver_sql("SELECT user_id FROM users WHERE name = 'vera'").scalar()
        token = issue_token(conn, int(user_id), 1)
    bearer = {"Authorization": f"Bearer {token}"}
    assert env.client.get("/api/v1/violations", headers=bearer).status_code == 200

    with env.db.write() as conn:  # a leaked token: reset issues new credentials
        password, fresh = reset_credentials(conn, "vera", 2)
    assert env.client.get("/api/v1/violations", headers=bearer).status_code == 401
    renewed = {"Authorization": f"Bearer {fresh}"}
    assert env.client.get("/api/v1/violations", headers=renewed).status_code == 200
    env.passwords["vera"] = password

    with env.db.write() as conn:  # she leaves: disable
        assert disable_user(conn, "vera", 3) == 1
    assert env.client.get("/api/v1/violations", headers=renewed).status_code == 401
    page = env.client.get("/violations", follow_redirects=False)  # the open session
    assert page.status_code in (303, 401, 403), page.status_code
    fresh_client = env.client.__class__(env.app, base_url="http://127.0.0.1")
    reply = env.try_login("vera", password, fresh_client)
    assert reply.status_code != 303  # the password no longer signs in
    fresh_client.close()


def test_replicas_sharing_a_session_key_accept_each_others_sign_ins(env: DashboardEnv) -> None:
    import dataclasses

    from fastapi.testclient import TestClient

    from proscribe.collector.app import create_app
    from proscribe.collector.config import settings_from_mapping

    def replica(key: bytes | None) -> TestClient:
        settings = settings_from_mapping({"database": {"url": env.db_url}})
        app = create_app(dataclasses.replace(settings, session_key=key))
        return TestClient(app, base_url="http://127.0.0.1")

    shared = b"s" * 48
    with replica(shared) as first, replica(shared) as second, replica(None) as other:
        env.login("vera", client=first)
        cookies = dict(first.cookies)
        assert cookies
        second.cookies.update(cookies)
        assert second.get("/violations", follow_redirects=False).status_code == 200
        other.cookies.update(cookies)  # a replica with its own random key: sign in again
        assert other.get("/violations", follow_redirects=False).status_code != 200


def test_host_page_shows_the_heartbeat_history(env: DashboardEnv) -> None:
    from proscribe.collector.storage.hosts import host_history_entries

    agent = env.enroll("ws-history")
    env.heartbeat(agent, serial=2)
    env.clock.now += 60
    env.heartbeat(agent, serial=2)  # nothing changed: no row
    env.clock.now += 60
    env.heartbeat(agent, serial=3, sensors={"process": "netlink", "dns": "<b>failed</b>\x1b"})
    env.clock.now += 3600  # silent for an hour, then back with drops
    env.heartbeat(
        agent,
        serial=3,
        sensors={"process": "netlink", "dns": "<b>failed</b>\x1b"},
        spool={"depth": 5, "bytes": 10, "dropped": 7},
    )
    with env.db.read() as conn:
        entries = host_history_entries(conn, agent[0])
    assert [e.kind for e in entries] == ["changed", "resumed", "changed", "first"]
    assert entries[0].detail == {"dropped events": [0, 7]}
    assert entries[1].detail == {"silent_s": 3600}
    assert entries[2].detail["policy serial"] == [2, 3]
    assert entries[2].detail["sensor dns"] == [None, "<b>failed</b>\x1b"]

    env.login("vera")
    page = env.client.get(f"/hosts/{agent[0]}").text
    history = page[page.index("Heartbeat history") : page.index("<h2>Timeline</h2>")]
    assert history.count("<tr>") == 5  # header + four rows
    assert "policy serial: 2 → 3" in history
    assert "dropped events: 0 → 7" in history
    assert "silent for 60 min" in history
    assert "first heartbeat" in history
    assert "&lt;b&gt;failed&lt;/b&gt;" in history and "<b>failed" not in history
    assert "\x1b" not in history


def test_failed_sign_ins_are_throttled_per_address_and_per_name(env: DashboardEnv) -> None:
    attempt = env.try_login
    for _ in range(10):
        assert attempt("vera", "wrong").status_code == 401
    refused = attempt("vera", env.passwords["vera"])  # right password, but too many guesses
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many failed sign-ins" in refused.text
    assert attempt("adam", env.passwords["adam"]).status_code == 429  # same address
    env.clock.now += 60  # a token back on both the address and the name
    assert attempt("vera", env.passwords["vera"]).status_code == 303
    # success takes no token: signing in again and again is never throttled
    for _ in range(12):
        assert attempt("adam", env.passwords["adam"]).status_code == 303


def test_admin_manages_people_from_the_dashboard(env: DashboardEnv) -> None:
    from proscribe.collector.storage.users import principal_for_token

    env.login("adam")
    csrf = env.csrf("/admin")
    assert (
        env.client.post("/admin/users", data={"name": "olga", "role": "viewer"}).status_code == 403
    )
    made = env.client.post("/admin/users", data={"name": "olga", "role": "viewer", "csrf": csrf})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    token = re.search(r"API token: <code>(pst_[^<]+)</code>", made.text)
    assert token is not None
    with env.db.read() as conn:
        olga = principal_for_token(conn, token.group(1))
    assert olga is not None and olga.role == "viewer"
    for bad in ({"name": "../x", "role": "viewer"}, {"name": "x", "role": "root"}):
        assert env.client.post("/admin/users", data={**bad, "csrf": csrf}).status_code == 400
    dup = env.client.post("/admin/users", data={"name": "olga", "role": "admin", "csrf": csrf})
    assert dup.status_code == 409

    reset = env.client.post("/admin/users/olga/reset", data={"csrf": csrf})
    fresh = re.search(r"API token: <code>(pst_[^<]+)</code>", reset.text)
    assert reset.status_code == 200 and fresh is not None and fresh.group(1) != token.group(1)
    with env.db.read() as conn:
        assert principal_for_token(conn, token.group(1)) is None  # the old token is revoked
        assert principal_for_token(conn, fresh.group(1)) is not None

    # an admin cannot lock themselves out; disabling someone else works and is audited
    assert env.client.post("/admin/users/adam/disable", data={"csrf": csrf}).status_code == 400
    gone = env.client.post("/admin/users/olga/disable", data={"csrf": csrf}, follow_redirects=False)
    assert gone.status_code == 303
    with env.db.read() as conn:
        assert principal_for_token(conn, fresh.group(1)) is None
        actions = [r[0] for r in conn.exec_driver_sql("SELECT action FROM audit_log ORDER BY seq")]
    assert actions[-3:] == ["user.add", "user.reset", "user.disable"]
    page = env.client.get("/admin").text
    assert "disabled" in page and "olga" in page
    assert env.client.post("/admin/users/olga/disable", data={"csrf": csrf}).status_code == 404
    assert env.client.post("/admin/users/nobody/reset", data={"csrf": csrf}).status_code == 404
