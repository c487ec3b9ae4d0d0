"""Hostile strings from endpoints (REFERENCE.md §4 "Collector") stored through the signed
agent API, then read back through every dashboard surface: HTML pages, the CSV and JSON
exports, and the report in all three formats. Markup stays text, template syntax is not
evaluated, control and bidi characters are shown as visible escapes, CSV cells cannot start
a formula."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.collector.csvexport import COLUMNS
from proscribe.collector.literal import show_html, visible_text
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
TEMPLATE = "{{7*7}}"
# Evaluated, this one renders as "tmplhit": a marker no timestamp or id can contain by chance.
TEMPLATE_CONCAT = "{{'tmpl'~'hit'}}"
RLO = "gpj\u202eexe.bat"
CLEAR = "\x1b[2J"
BELL = "a\x07b"
FORMULA = '=HYPERLINK("http://evil","x")'


@pytest.fixture
def env(tmp_path: Path, env_templates: EnvTemplates) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates)


def hostile_event(env: DashboardEnv) -> dict[str, object]:
    # A minute before the app's frozen clock, so that every period ending "now" includes it.
    return event(
        when=env.clock.now - 60,
        host={"hostname": IMG},
        process={
            "pid": 1,
            "name": SCRIPT,
            "exe": "/tmp/" + RLO,
            "cmdline": [FORMULA, TEMPLATE, CLEAR, BELL, TEMPLATE_CONCAT],
            "user": TEMPLATE,
        },
        detail="-2+3 " + CLEAR,
    )


def test_html_pages_show_hostile_strings_literally(env: DashboardEnv) -> None:
    # Events are filed under the enrolled hostname (the body's is only a claim), so the
    # hostile hostname is the enrolled one.
    agent = env.enroll(hostname=IMG)
    env.heartbeat(agent)
    env.post_events(agent, [hostile_event(env)])
    env.login("vera")
    for path in ("/violations?since=1h", f"/hosts/{agent[0]}", "/report?since=1h", "/", "/hosts"):
        html = env.client.get(path).text
        assert "<script" not in html, path
        assert "<img" not in html, path
        assert "\x1b" not in html and "\u202e" not in html and "\x07" not in html, path
        assert "tmplhit" not in html, path
    for path in ("/violations?since=1h", f"/hosts/{agent[0]}", "/report?since=1h"):
        html = env.client.get(path).text
        assert TEMPLATE in html and TEMPLATE_CONCAT.replace("'", "&#39;") in html, path
    html = env.client.get("/violations?since=1h").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "{{7*7}}" in html
    assert '<span class="ctl" title="control character U+001B">\\x1b</span>[2J' in html
    assert 'gpj<span class="ctl" title="control character U+202E">\\u202e</span>exe.bat' in html


def test_exports_and_reports_are_inert(env: DashboardEnv) -> None:
    agent = env.enroll(hostname=IMG)
    env.post_events(agent, [hostile_event(env)])
    env.login("vera")

    text = env.client.get("/violations/export.csv?since=1h").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 1
    row = rows[0]
    assert row["process"] == SCRIPT  # text, not markup: CSV is not HTML
    assert row["cmdline"].startswith("'=HYPERLINK")  # formula neutralised
    assert row["detail"].startswith("'-2+3")
    assert "\\x1b[2J" in row["cmdline"] and "\\x07" in row["cmdline"]
    assert "\x1b" not in text and "\u202e" not in text
    assert row["hostname"] == IMG

    raw = env.client.get("/violations/export.json?since=1h").text
    assert "<" not in raw and ">" not in raw and "\x1b" not in raw and "\u202e" not in raw
    data = json.loads(raw)
    assert data["violations"][0]["process"]["name"] == SCRIPT  # exact round trip
    assert data["violations"][0]["process"]["cmdline"][2] == CLEAR

    env.clock.now += 5  # the report ends "now"; the event was stamped after the clock was set
    report_json = env.client.get("/report/export.json?since=1h").text
    assert "<" not in report_json and "\x1b" not in report_json
    assert json.loads(report_json)["violations"][0]["process"]["exe"] == "/tmp/" + RLO
    report_csv = env.client.get("/report/export.csv?since=1h").text
    assert next(csv.reader(io.StringIO(report_csv))) == list(COLUMNS)
    assert "'=HYPERLINK" in report_csv and "\x1b" not in report_csv
    report_html = env.client.get("/report/export.html?since=1h").text
    assert "<script" not in report_html and "<img" not in report_html
    assert "&lt;script&gt;" in report_html and "{{7*7}}" in report_html


def test_literal_helpers() -> None:
    assert visible_text("a\x1bb\u202ec\u2028d\te") == "a\\x1bb\\u202ec\\u2028d\\x09e"
    assert visible_text("plain ünïcode 中文") == "plain ünïcode 中文"
    assert visible_text(None) == ""
    assert str(show_html("<b>")) == "&lt;b&gt;"
    assert str(show_html("x" * 400, 10)) == "x" * 9 + "…"
    marked = str(show_html("<\x00>"))
    assert marked == '&lt;<span class="ctl" title="control character U+0000">\\x00</span>&gt;'
