"""No single event blocks the others (issue 15, collector): a bad time, a time from the future
or a row the database refuses is that event's ``rejected`` verdict with a reason, counted on
/metrics by cause, while the good events beside it are stored — never a 500 for the batch,
which the agent would resend for ever. Real app, real SQLite (and PostgreSQL for the row the
database refuses); requests signed as the agent signs them."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from proscribe.collector.storage.tables import events
from proscribe.core.events import new_event
from proscribe.core.wire.auth import sign_request
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, make_env

BAD_TIMES = [
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: OverflowError on main
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "2025-13-01T00:00:00Z",  # not a date
    "yesterday",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, env_templates: EnvTemplates
) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates, request.param)


def _event(**over: Any) -> dict[str, Any]:
    ev = new_event(
        "dns", rule="deepseek-web", action="sinkholed", dns={"qname": "chat.deepseek.com"}
    )
    ev.update(over)
    return ev


def _post(env: DashboardEnv, agent: tuple[str, Any], items: list[dict[str, Any]]) -> Any:
    agent_id, key = agent
    body = json.dumps({"events": items}).encode()
    headers = sign_request(key, agent_id, "POST", "/api/v1/events", body, now=env.clock.now)
    headers["Content-Type"] = "application/json"
    return env.client.post("/api/v1/events", content=body, headers=headers)


def _stored(env: DashboardEnv) -> int:
    with env.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def _dead_letters(env: DashboardEnv) -> dict[str, int]:
    local = TestClient(env.app, client=("127.0.0.1", 40000))  # /metrics: loopback only
    found = {}
    for line in local.get("/metrics").text.splitlines():
        if line.startswith("proscribe_events_dead_letter_total{"):
            cause = line.split('cause="')[1].split('"')[0]
            found[cause] = int(float(line.rsplit(" ", 1)[1]))
    return found


@pytest.mark.parametrize("bad_time", BAD_TIMES)
def test_a_bad_time_is_that_events_rejection_and_the_rest_is_stored(
    env: DashboardEnv, bad_time: str
) -> None:
    agent = env.enroll()
    good = [_event() for _ in range(100)]
    bad = _event(time=bad_time)
    reply = _post(env, agent, [*good[:50], bad, *good[50:]])
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["status"] for r in results].count("stored") == 100
    verdict = results[50]
    assert (verdict["id"], verdict["status"]) == (bad["id"], "rejected")
    assert "time" in verdict["error"]
    assert _stored(env) == 100
    assert _dead_letters(env)["invalid"] == 1


def test_a_time_beyond_the_signing_window_is_refused_per_event(env: DashboardEnv) -> None:
    from proscribe.collector.ingest import MAX_FUTURE_SKEW_S
    from proscribe.core.wire.auth import MAX_SKEW_SECONDS

    assert MAX_FUTURE_SKEW_S == MAX_SKEW_SECONDS == 300  # the agents' signing window
    agent = env.enroll()
    now = datetime.fromtimestamp(env.clock.now, UTC)

    def at(seconds: float) -> str:
        return (now + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    items = [
        _event(time=at(MAX_FUTURE_SKEW_S + 5)),  # an agent clock this far ahead cannot sign
        _event(time=at(MAX_FUTURE_SKEW_S - 5)),  # within the window: a clock a little ahead
        _event(time="9999-12-31T23:59:59Z"),  # would sit on top of every newest-first list
        _event(time=at(-86_400)),  # yesterday: fine
    ]
    results = _post(env, agent, items).json()["results"]
    assert [r["status"] for r in results] == ["rejected", "stored", "rejected", "stored"]
    assert "ahead of the collector's clock" in results[0]["error"]
    assert _dead_letters(env)["future_time"] == 2


def test_the_newest_first_list_is_not_led_by_a_future_event(env: DashboardEnv) -> None:
    agent = env.enroll()
    _post(env, agent, [_event(time="9999-12-31T23:59:59Z"), _event(rule="newest")])
    token = _viewer_token(env)
    items = env.client.get(
        "/api/v1/violations", headers={"Authorization": f"Bearer {token}"}
    ).json()["items"]
    assert [i["rule"] for i in items] == ["newest"]


def _viewer_token(env: DashboardEnv) -> str:
    from proscribe.collector.storage.users import add_user

    with env.db.write() as conn:
        return add_user(conn, f"reader{uuid.uuid4().hex[:6]}", "viewer", 0)[1]


def test_a_row_the_database_refuses_is_rejected_alone(env: DashboardEnv) -> None:
    """A 4096-character rule of 3-byte characters passes the schema (4096 characters) but is
    12 KiB in an index entry: PostgreSQL's btree takes at most ~2.7 KiB. On main the whole
    batch answered 500, for ever. SQLite stores it."""
    agent = env.enroll()
    rng = random.Random(15)  # incompressible: PostgreSQL compresses index entries first
    wide = _event(rule="".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(4096)))
    items = [_event(), wide, _event()]
    reply = _post(env, agent, items)
    assert reply.status_code == 200, reply.text
    statuses = [r["status"] for r in reply.json()["results"]]
    if env.db.is_sqlite:
        assert statuses == ["stored"] * 3
        return
    assert statuses == ["stored", "rejected", "stored"]
    assert "refused by the database" in reply.json()["results"][1]["error"]
    assert _stored(env) == 2
    assert _dead_letters(env)["storage"] == 1
    # the agent resends what it did not get a verdict for; the verdicts are stable
    again = _post(env, agent, items).json()["results"]
    assert [r["status"] for r in again] == ["duplicate", "rejected", "duplicate"]
