"""One violations filter, one answer: the API, the dashboard's page, its CSV/JSON exports, the
report pages and ``proscribe collector report`` take the same values through one parser
(``proscribe.collector.filters``). An empty value is no filter everywhere; a bad one is a 4xx
naming the parameter (a 422 JSON reason in the API, a one-line message on the page), exit 2
with one line from the command line — never a 500 or a traceback (issue 15: the overflowing
times below answered 500 on every one of them)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proscribe.cli import main
from proscribe.collector.storage.users import add_user
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env

BAD = [
    ("since", "0001-01-01T00:00:00+01:00", "out of range"),
    ("since", "9999-12-31T23:59:59-01:00", "out of range"),
    ("until", "9999-12-31T23:59:59-01:00", "out of range"),
    ("since", "yesterday", "not a time"),
    ("since", "100000d", "not a time"),  # more than 99999 days: not a calendar moment
    ("until", "2025-02-30T00:00:00Z", "not a time"),
    ("kind", "keylogger", "must be one of"),
    ("severity", "urgent", "must be one of"),
    ("host", "ws\x001", "NUL"),
]


@pytest.fixture
def env(tmp_path: Path, env_templates: EnvTemplates) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates)


@pytest.fixture
def stocked(env: DashboardEnv, tmp_path: Path) -> dict[str, Any]:
    """Events on two hosts at known times, a viewer token, a signed-in viewer and a CLI config."""
    now = env.clock.now
    agent = env.enroll("ws-1")
    other = env.enroll("ws-2")
    env.post_events(agent, [event(when=now - 3600 * h, rule=f"r{h}") for h in range(1, 6)])
    env.post_events(other, [event(when=now - 60, rule="r-other", kind="dns", action="sinkholed",
                                  dns={"qname": "chat.deepseek.com"})])  # fmt: skip
    with env.db.write() as conn:
        token = add_user(conn, "reader", "viewer", 0)[1]
    env.login("vera")
    config = tmp_path / "collector.toml"
    config.write_text(f'[database]\nurl = "{env.db_url}"\n', encoding="utf-8")
    return {"token": token, "config": config}


def _api(env: DashboardEnv, stocked: dict[str, Any], **params: str) -> Any:
    headers = {"Authorization": f"Bearer {stocked['token']}"}
    return env.client.get("/api/v1/violations", params={"limit": "1000", **params}, headers=headers)


def _cli(
    stocked: dict[str, Any], capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    code = main(["collector", "report", "--config", str(stocked["config"]), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("name", "value", "reason"), BAD)
def test_a_bad_value_is_refused_naming_it_at_every_entry_point(
    env: DashboardEnv,
    stocked: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    reason: str,
) -> None:
    api = _api(env, stocked, **{name: value})
    assert api.status_code == 422, api.text
    (problem,) = api.json()["detail"]
    assert problem["loc"] == ["query", name]
    assert api.headers["x-content-type-options"] == "nosniff"

    page = env.client.get("/violations", params={name: value})
    assert page.status_code == 400
    message = re.search(r'<div class="error" id="filter-error">(.*?)</div>', page.text)
    assert message is not None and f"{name}:" in message.group(1)
    assert "\n" not in message.group(1)
    assert 'name="since"' in page.text  # the form again, to correct the value

    for export in ("/violations/export.csv", "/violations/export.json"):
        download = env.client.get(export, params={name: value})
        assert download.status_code == 400, export
        assert download.headers["content-type"].startswith("text/html")
        assert f"{name}:" in download.text

    if name in ("since", "until"):
        for path in ("/report", "/report/export.csv", "/report/export.json"):
            report = env.client.get(path, params={name: value})
            assert report.status_code == 400, path
            assert f"{name}:" in report.text

    if name in ("since", "until", "host"):
        code, out, err = _cli(stocked, capsys, f"--{name}", value, "--format", "json")
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1 and f"--{name}:" in err and reason in err
        assert "Traceback" not in err


@pytest.mark.parametrize(
    "query",
    [
        {"since": "", "host": "ws-1"},  # empty since: all time, everywhere (a 422 on main's API)
        {"since": "2h", "until": ""},
        {"since": "1d", "kind": "", "action": "", "severity": ""},
        {"since": "1d", "kind": "dns"},
        {"since": " 4h ", "rule": " r2 "},  # blanks around a value are ignored
    ],
)
def test_one_query_gives_one_answer(
    env: DashboardEnv,
    stocked: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    query: dict[str, str],
) -> None:
    api = _api(env, stocked, **query)
    assert api.status_code == 200, api.text
    expected = sorted(item["id"] for item in api.json()["items"])
    assert expected  # each query matches something

    exported = env.client.get("/violations/export.json", params=query)
    assert exported.status_code == 200
    assert sorted(v["id"] for v in exported.json()["violations"]) == expected

    table = env.client.get("/violations/export.csv", params=query)
    assert sorted(row["id"] for row in csv.DictReader(io.StringIO(table.text))) == expected

    page = env.client.get("/violations", params={**query, "limit": "200"})
    assert page.status_code == 200
    assert 'id="filter-error"' not in page.text

    argv = [f"--{k}={v}" for k, v in query.items() if k in ("since", "until", "host", "rule")]
    if {"kind", "action", "severity"} & {k for k, v in query.items() if v}:
        return  # the CLI report filters by period, host and rule only
    code, out, _err = _cli(stocked, capsys, *argv, "--format", "json")
    assert code == 0
    assert sorted(v["id"] for v in json.loads(out)["violations"]) == expected


def test_a_reversed_period_is_an_empty_filter_but_a_refused_report(
    env: DashboardEnv, stocked: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    query = {"since": "1h", "until": "3h"}
    api = _api(env, stocked, **query)
    assert api.status_code == 200 and api.json()["items"] == []
    assert env.client.get("/violations/export.json", params=query).json()["violations"] == []
    assert env.client.get("/report", params=query).status_code == 400
    code, _out, err = _cli(stocked, capsys, "--since", "1h", "--until", "3h", "--format", "csv")
    assert code == 2 and "--until: must be later than since" in err


def test_the_api_empty_since_was_a_422_and_is_now_all_time(
    env: DashboardEnv, stocked: dict[str, Any]
) -> None:
    everything = _api(env, stocked)
    assert len(_api(env, stocked, since="").json()["items"]) == len(everything.json()["items"]) == 6
    assert time.time() - env.clock.now < 3600  # the fixture's events are recent
