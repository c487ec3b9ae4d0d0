"""The dashboard in a real headless Chromium against a real collector on loopback.

A viewer signs in, filters violations, exports the filter as CSV (the download is read back),
opens the report and prints it to PDF; a viewer cannot reach admin actions (no link, 403
page, 403 on a forged POST) while an admin can; an XSS payload stored through the signed
agent API renders as text and runs nothing; every page carries the CSP header.
"""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proscribe.collector.csvexport import COLUMNS
from proscribe.collector.web.security import CONTENT_SECURITY_POLICY
from tests.support.simulate import SimulatedAgent

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCRIPT_NAME = "<script>window.__pwned = 'script'</script>"
IMG_CMD = '"><img src=x onerror="window.__pwned=\'img\'">'
TEMPLATE = "{{7*7}}"
RLO = "evil\u202etxt.exe"
CLEAR = "\x1b[2J"
HOSTILE_HOST = "<img src=x onerror=window.__pwned='host'>"
# Echoed in attribute values (filter form, datalist hints) where only autoescape protects it.
HOSTILE_USER = '"><img src=x onerror="window.__pwned=\'user\'">{{7*7}}'


def sign_in(page: Any, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/")  # redirected to the login page
    assert "/login" in page.url
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def assert_csp(response: Any) -> None:
    assert response is not None
    headers = response.headers
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@pytest.fixture
def context(browser: Any) -> Any:
    ctx = browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
    yield ctx
    ctx.close()


def test_viewer_filters_exports_csv_and_prints_the_report(dashboard: Any, context: Any) -> None:
    page = context.new_page()
    sign_in(page, dashboard.url, "vera", dashboard.viewer_password)
    assert page.locator("svg.chart rect.bar-blocked").count() > 0
    assert page.locator("nav a", has_text="Violations").is_visible()
    for href in page.locator("nav a").evaluate_all("links => links.map(a => a.href)"):
        assert_csp(page.goto(href))  # every page in the navigation

    response = page.goto(f"{dashboard.url}/violations?since=30d")
    assert_csp(response)
    page.fill("#f-rule", "deepseek-desktop")
    page.select_option("#f-limit", "200")
    page.click("#apply-filter")
    page.wait_for_url("**rule=deepseek-desktop**")
    rules = page.locator("table tbody tr td:nth-child(4)").all_inner_texts()
    assert rules and set(rules) == {"deepseek-desktop"}

    with page.expect_download() as info:
        page.click("#export-csv")
    download = info.value
    text = Path(download.path()).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) - 1 >= len(rules) > 0
    assert {r[COLUMNS.index("rule")] for r in rows[1:]} == {"deepseek-desktop"}

    response = page.goto(f"{dashboard.url}/report?since=30d")
    assert_csp(response)
    assert page.locator(".cover h1").inner_text().startswith("DeepSeek prohibited")
    assert "Serials in force" in page.inner_text(".cover")
    page.emulate_media(media="print")
    assert not page.locator("header.topbar").is_visible()
    assert not page.locator(".report-controls").is_visible()
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")
    # The cover has a page of its own, then the tables: at least three pages.
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 3


def test_viewer_cannot_reach_admin_actions(dashboard: Any, context: Any) -> None:
    page = context.new_page()
    sign_in(page, dashboard.url, "vera", dashboard.viewer_password)
    assert page.locator("nav a[href='/admin']").count() == 0
    response = page.goto(f"{dashboard.url}/admin")
    assert response is not None and response.status == 403
    assert_csp(response)
    assert "Not allowed" in page.inner_text("main")
    forged = page.request.post(
        f"{dashboard.url}/admin/enroll-secrets", form={"label": "x", "csrf": "x"}
    )
    assert forged.status == 403
    page.goto(f"{dashboard.url}/hosts")
    agent_link = page.get_attribute("table a[href^='/hosts/']", "href")
    assert agent_link is not None
    agent_id = agent_link.rsplit("/", 1)[1]
    forged = page.request.post(f"{dashboard.url}/admin/agents/{agent_id}/revoke")
    assert forged.status == 403


def test_admin_sees_and_uses_admin_actions(dashboard: Any, context: Any) -> None:
    page = context.new_page()
    sign_in(page, dashboard.url, "adam", dashboard.admin_password)
    assert page.locator("nav a[href='/admin']").count() == 1
    response = page.goto(f"{dashboard.url}/admin")
    assert response is not None and response.status == 200
    assert_csp(response)
    page.fill("input[name=label]", "kiosk fleet")
    page.click("#create-secret")
    secret = page.locator("#new-secret code").last.inner_text()
    assert secret.startswith("pse_")
    # The new secret enrolls an agent through the real API.
    agent = SimulatedAgent(dashboard.url)
    try:
        assert agent.enroll(secret, hostname="kiosk-1").status == 200
    finally:
        agent.close()


def hostile_event() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": str(uuid.uuid4()),
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "kind": "process",
        "rule": "deepseek-desktop",
        "action": "killed",
        "severity": "high",
        "policy": {"id": "us-navy-deepseek-2025", "serial": 2},
        "host": {"hostname": HOSTILE_HOST, "os": "linux"},
        "process": {
            "pid": 4242,
            "name": SCRIPT_NAME,
            "exe": "/tmp/" + RLO,
            "cmdline": [IMG_CMD, TEMPLATE, CLEAR],
            "user": HOSTILE_USER,
        },
        "detail": "clear" + CLEAR + " and " + RLO,
    }


def test_stored_xss_through_the_agent_api_does_not_execute(dashboard: Any, context: Any) -> None:
    agent = SimulatedAgent(dashboard.url)
    try:
        assert agent.enroll(dashboard.enroll_secret, hostname=HOSTILE_HOST).status == 200
        reply = agent.post_events([hostile_event()])
        assert reply.status == 200, reply.body
        assert reply.json()["results"][0]["status"] == "stored"
        agent_id = agent.agent_id
    finally:
        agent.close()

    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, dashboard.url, "vera", dashboard.viewer_password)
    for path in (
        "/violations?since=1h&" + urllib.parse.urlencode({"user": HOSTILE_USER}),
        "/violations?since=1h",
        f"/hosts/{agent_id}",
        "/report?since=1h",
        "/",
        "/hosts",
    ):
        response = page.goto(f"{dashboard.url}{path}")
        assert_csp(response)
        assert response is not None and response.status == 200, path
        assert page.evaluate("() => window.__pwned") is None, path
        # Nothing injected became an element: no script, no <img src=x>.
        assert page.locator("script").count() == 0, path
        assert page.locator("img").count() == 0, path
        body = page.inner_text("body")
        if path != "/hosts":
            assert "{{7*7}}" in body or path == "/", path
        if path.startswith(("/violations", "/hosts/", "/report")):
            assert SCRIPT_NAME in body, path
            assert IMG_CMD in body, path
            # Control and bidi characters are shown as escapes, never raw.
            assert "\\x1b[2J" in body and "\x1b" not in body, path
            assert "evil\\u202etxt.exe" in body and "\u202e" not in body, path
    assert dialogs == []
    # The JSON export of the same rows is inert too.
    exported = page.request.get(f"{dashboard.url}/violations/export.json?since=1h")
    assert exported.status == 200
    raw = exported.text()
    assert "<" not in raw and "\u202e" not in raw and "\x1b" not in raw
    names = [v["process"]["name"] for v in json.loads(raw)["violations"]]
    assert SCRIPT_NAME in names
