"""What every answer of the collector carries (issue 15, collector): JSON-only agent posts
(415 otherwise), one escaping rule for every export, inert JSON, security headers on every
response (errors and HEAD included), an HTML 500 on dashboard pages, /docs and /redoc from
local files only, and /metrics only for those allowed to read it. The real app in-process."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage.tables import events
from proscribe.collector.storage.users import add_user
from proscribe.core.wire.auth import sign_request
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env

HOSTILE = {
    "esc": "\x1b[2Jcleared",
    "cr": "\rcarriage",
    "tab": "\ttabbed",
    "bidi": "evil\u202etxt.exe",
    "formula": '=HYPERLINK("http://x")',
    "script": "<script>alert(1)</script>",
}


@pytest.fixture
def env(tmp_path: Path, env_templates: EnvTemplates) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates)


def _token(env: DashboardEnv, role: str = "viewer") -> str:
    with env.db.write() as conn:
        return add_user(conn, f"{role}-api", role, 0)[1]


def _stored(env: DashboardEnv) -> int:
    with env.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


# --- 415 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/xml",
        None,
    ],
)
def test_signed_posts_that_are_not_json_are_415_and_store_nothing(
    env: DashboardEnv, content_type: str | None
) -> None:
    agent_id, key = env.enroll()
    body = json.dumps({"events": [event()]}).encode()
    for path in ("/api/v1/events", "/api/v1/heartbeat"):
        payload = body if path.endswith("events") else b'{"hostname": "ws-1"}'
        headers = sign_request(key, agent_id, "POST", path, payload, now=env.clock.now)
        if content_type:
            headers["Content-Type"] = content_type
        reply = env.client.post(path, content=payload, headers=headers)
        assert reply.status_code == 415, (path, reply.text)
        assert reply.json()["error"] == "unsupported_media_type"
    assert _stored(env) == 0
    enroll = env.client.post(
        "/api/v1/enroll", content=b"secret=x", headers={"Content-Type": content_type or ""}
    )
    assert enroll.status_code == 415


def test_json_with_a_charset_is_json(env: DashboardEnv) -> None:
    agent_id, key = env.enroll()
    body = json.dumps({"events": [event()]}).encode()
    headers = sign_request(key, agent_id, "POST", "/api/v1/events", body, now=env.clock.now)
    headers["Content-Type"] = "Application/JSON; charset=utf-8"
    assert env.client.post("/api/v1/events", content=body, headers=headers).status_code == 200


# --- one escaping rule ------------------------------------------------------------------------


def test_the_api_csv_escapes_exactly_as_the_dashboard_csv(env: DashboardEnv) -> None:
    agent = env.enroll()
    env.post_events(
        agent,
        [event(rule=f"rule-{name}", when=env.clock.now - 60,
               process={"pid": 1, "name": text, "user": text})
         for name, text in HOSTILE.items()],
    )  # fmt: skip
    api = env.client.get(
        "/api/v1/violations",
        params={"format": "csv"},
        headers={"Authorization": f"Bearer {_token(env)}"},
    )
    env.login("vera")
    dashboard = env.client.get("/violations/export.csv", params={"since": ""})
    report = env.client.get("/report/export.csv")

    def cells(text: str) -> dict[str, dict[str, str]]:
        return {row["rule"]: row for row in csv.DictReader(io.StringIO(text))}

    api_rows = cells(api.text)
    assert cells(dashboard.text) == api_rows
    assert {k: v["process"] for k, v in cells(report.text).items()} == {
        k: v["process"] for k, v in api_rows.items()
    }
    shown = {name: api_rows[f"rule-{name}"]["process"] for name in HOSTILE}
    assert shown == {
        "esc": "\\x1b[2Jcleared",
        "cr": "'\\x0dcarriage",
        "tab": "'\\x09tabbed",
        "bidi": "evil\\u202etxt.exe",
        "formula": '\'=HYPERLINK("http://x")',
        "script": "<script>alert(1)</script>",  # text in a CSV; the header says so
    }
    raw = api.text + dashboard.text
    assert not any(ch in raw for ch in ("\x1b", "\u202e", "\t"))
    assert api.headers["x-content-type-options"] == "nosniff"


def test_api_json_is_ascii_with_markup_and_bidi_escaped(env: DashboardEnv) -> None:
    agent = env.enroll()
    env.post_events(agent, [event(process={"pid": 1, "name": HOSTILE["script"] + HOSTILE["bidi"]})])
    reply = env.client.get("/api/v1/violations", headers={"Authorization": f"Bearer {_token(env)}"})
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.content.isascii()
    assert b"<" not in reply.content and b">" not in reply.content
    assert b"\\u003cscript\\u003e" in reply.content and b"\\u202e" in reply.content
    name = reply.json()["items"][0]["process"]["name"]
    assert name == HOSTILE["script"] + HOSTILE["bidi"]  # round-trips exactly


# --- headers on every answer ------------------------------------------------------------------

DASHBOARD_CSP, API_CSP, DOCS_CSP = "dashboard", "api", "docs"


def _policy(kind: str) -> str:
    from proscribe.collector import guard

    return {"dashboard": guard.DASHBOARD_CSP, "api": guard.API_CSP, "docs": guard.DOCS_CSP}[kind]


SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def _assert_security_headers(reply: Any, csp: str) -> None:
    for name, value in SECURITY.items():
        assert reply.headers.get(name) == value, (reply.request.url, name)
    assert reply.headers.get("content-security-policy") == _policy(csp), reply.request.url


@pytest.mark.parametrize(
    ("method", "path", "status", "csp"),
    [
        ("GET", "/nope", 404, DASHBOARD_CSP),
        ("GET", "/api/v1/nope", 404, API_CSP),
        ("DELETE", "/api/v1/events", 405, API_CSP),
        ("HEAD", "/api/v1/violations", 405, API_CSP),
        ("HEAD", "/healthz", 405, API_CSP),
        ("GET", "/api/v1/violations", 401, API_CSP),
        ("GET", "/api/v1/violations?since=yesterday", 401, API_CSP),
        ("POST", "/api/v1/events", 401, API_CSP),
        ("POST", "/api/v1/enroll", 415, API_CSP),
        ("GET", "/healthz", 200, API_CSP),
        ("GET", "/openapi.json", 200, API_CSP),
        ("GET", "/metrics", 403, API_CSP),
        ("GET", "/login", 200, DASHBOARD_CSP),
        ("HEAD", "/login", 405, DASHBOARD_CSP),
        ("GET", "/static/dashboard.css", 200, DASHBOARD_CSP),
        ("GET", "/docs", 404, DOCS_CSP),
    ],
)
def test_every_answer_carries_the_security_headers(
    env: DashboardEnv, method: str, path: str, status: int, csp: str
) -> None:
    reply = env.client.request(method, path, follow_redirects=False)
    assert reply.status_code == status, reply.text
    _assert_security_headers(reply, csp)
    if not path.startswith("/static/"):
        assert reply.headers["cache-control"] == "no-store"


def _with_bug(tmp_path: Path, **config: Any) -> Any:
    app = create_app(
        settings_from_mapping({"database": {"url": f"sqlite:///{tmp_path / 'b.db'}"}, **config})
    )

    def page_bug() -> None:
        raise RuntimeError("secret internals of a page")

    app.add_api_route("/hosts-broken", page_bug, include_in_schema=False)
    app.add_api_route("/api/v1/broken", page_bug)
    return app


def test_a_bug_on_a_page_is_an_html_500_and_in_the_api_a_json_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(_with_bug(tmp_path), raise_server_exceptions=False) as client:
        page = client.get("/hosts-broken")
        api = client.get("/api/v1/broken")
    assert page.status_code == 500
    assert page.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in page.text.lower() and "500" in page.text
    _assert_security_headers(page, DASHBOARD_CSP)
    assert api.status_code == 500
    assert api.json() == {"error": "internal_error", "detail": "see the collector's log"}
    _assert_security_headers(api, API_CSP)
    for reply in (page, api):
        assert "secret internals" not in reply.text and "Traceback" not in reply.text
    logged = [r for r in caplog.records if r.exc_info and "secret internals" in str(r.exc_info[1])]
    assert len(logged) == 2  # once per request, not twice


# --- /docs and /redoc -------------------------------------------------------------------------


def test_api_docs_are_off_by_default(env: DashboardEnv) -> None:
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js"):
        assert env.client.get(path).status_code == 404


def test_api_docs_when_enabled_load_nothing_from_elsewhere(tmp_path: Path) -> None:
    app = create_app(
        settings_from_mapping(
            {"database": {"url": f"sqlite:///{tmp_path / 'd.db'}"}, "server": {"api_docs": True}}
        )
    )
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            reply = client.get(page)
            assert reply.status_code == 200
            _assert_security_headers(reply, DOCS_CSP)
            urls = re.findall(r'(?:src|href)="([^"]+)"', reply.text)
            assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
            assert "<script>" not in reply.text  # no inline script: the CSP allows none
            for url in urls:
                asset = client.get(url)
                assert asset.status_code == 200 and asset.content, url
                _assert_security_headers(asset, DOCS_CSP)
        assert b"cdn.jsdelivr.net" not in client.get("/docs/assets/swagger-init.js").content
        assert client.get("/docs/assets/../config.py").status_code == 404


# --- /metrics ---------------------------------------------------------------------------------


def _metrics_app(tmp_path: Path, metrics: dict[str, Any]) -> Any:
    return create_app(
        settings_from_mapping(
            {"database": {"url": f"sqlite:///{tmp_path / 'm.db'}"}, "metrics": metrics}
        )
    )


def test_metrics_default_to_loopback_clients(tmp_path: Path) -> None:
    app = _metrics_app(tmp_path, {})
    with TestClient(app, client=("192.0.2.7", 5000)) as remote:
        assert remote.get("/metrics").status_code == 403
        local = TestClient(app, client=("127.0.0.1", 5000))
        assert "proscribe_events_total" in local.get("/metrics").text
        mapped = TestClient(app, client=("::ffff:127.0.0.1", 5000))
        assert mapped.get("/metrics").status_code == 200


def test_metrics_with_a_token(tmp_path: Path) -> None:
    token = tmp_path / "metrics.token"
    token.write_text("t" * 40 + "\n")
    token.chmod(0o600)
    app = _metrics_app(tmp_path, {"access": "token", "token_file": str(token)})
    with TestClient(app, client=("192.0.2.7", 5000)) as client:
        assert client.get("/metrics").status_code == 401
        wrong = {"Authorization": "Bearer " + "u" * 40}
        assert client.get("/metrics", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer " + "t" * 40}
        assert client.get("/metrics", headers=right).status_code == 200
        local = TestClient(app, client=("127.0.0.1", 5000))
        assert local.get("/metrics").status_code == 401  # the token, from anywhere


def test_metrics_open_to_all_when_said_so(tmp_path: Path) -> None:
    with TestClient(_metrics_app(tmp_path, {"access": "open"}), client=("192.0.2.7", 1)) as c:
        assert c.get("/metrics").status_code == 200
