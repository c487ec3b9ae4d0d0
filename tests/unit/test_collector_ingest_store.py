"""The stored form of an ingested batch, on SQLite and PostgreSQL alike: each body is encoded
once for the whole batch (on PostgreSQL as a nested object of the batch document, whose text the
database keeps exactly), the stored ids come back as one array, and neither changes a verdict:
duplicates by id inside a batch, across batches and in a batch of nothing but duplicates; a bad
event among good ones rejected alone with its reason; counts exact. Real app, real databases,
requests signed as the agent signs them."""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy import select

from proscribe.collector.api.errors import ApiError, validation_detail
from proscribe.collector.api.schema import EVENT_DICT, EventBatch, EventIn
from proscribe.collector.ingest import parse_batch
from proscribe.collector.storage import counts
from proscribe.collector.storage.events import body_text, insert_events
from proscribe.collector.storage.tables import events
from proscribe.core.events import MAX_EVENTS_PER_BATCH, MAX_STRING
from proscribe.core.wire.auth import sign_request
from tests.support.dashboard_env import DashboardEnv, EnvTemplates, event, make_env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, env_templates: EnvTemplates
) -> Iterator[DashboardEnv]:
    yield from make_env(tmp_path, env_templates, request.param)


def _post(env: DashboardEnv, agent: tuple[str, Any], items: list[Any]) -> list[dict[str, Any]]:
    agent_id, key = agent
    body = json.dumps({"events": items}).encode()
    headers = sign_request(key, agent_id, "POST", "/api/v1/events", body, now=env.clock.now)
    headers["Content-Type"] = "application/json"
    reply = env.client.post("/api/v1/events", content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    results: list[dict[str, Any]] = reply.json()["results"]
    return results


def _bodies(env: DashboardEnv) -> dict[str, str]:
    with env.db.read() as conn:
        rows = conn.execute(select(events.c.event_id, events.c.body)).all()
    return {str(r[0]): str(r[1]) for r in rows}


def _counted(env: DashboardEnv) -> int:
    with env.db.read() as conn:
        return counts.total(conn)


# Strings JSON must escape, text beyond ASCII, a control character, a float, a nested list: the
# body's text must come out exactly as encoded, whatever the database.
AWKWARD = {
    "pid": 4242,
    "name": 'de"ep\\seek',
    "exe": "/opt/日本語/ds\u202e\t",
    "cmdline": ["dsh", "--prompt", "<script>&\x1b[2J", "é" * 40],
    "user": "ålice",
    "start_time": 1733312345.125,
}


def test_the_stored_body_is_the_event_as_sent_with_the_authenticated_host(
    env: DashboardEnv,
) -> None:
    agent = env.enroll("ws-real")
    item = event(process=AWKWARD, host={"hostname": "forged-name", "os": "linux"})
    assert _post(env, agent, [item])[0]["status"] == "stored"
    stored = _bodies(env)[item["id"]]
    expected = {
        **item,
        "host": {
            "hostname": "ws-real",
            "os": "linux",
            "agent_id": agent[0],
            "claimed_hostname": "forged-name",
        },
    }
    assert json.loads(stored) == expected
    # compact UTF-8 JSON, the same text on both databases
    assert stored == to_json(expected).decode()
    assert "ålice" in stored and "\\u00e5" not in stored


def test_duplicates_inside_a_batch_across_batches_and_a_batch_of_only_duplicates(
    env: DashboardEnv,
) -> None:
    agent = env.enroll()
    first, second, third = event(), event(), event()
    # the repeat inside the batch is a duplicate of its first, whatever its content
    results = _post(env, agent, [first, second, {**first, "rule": "other"}])
    assert [r["status"] for r in results] == ["stored", "stored", "duplicate"]
    # across batches: the database answers (ids come back as one array)
    results = _post(env, agent, [second, third, first])
    assert [(r["id"], r["status"]) for r in results] == [
        (second["id"], "duplicate"),
        (third["id"], "stored"),
        (first["id"], "duplicate"),
    ]
    # nothing stored at all: the array is empty (NULL on PostgreSQL), every verdict duplicate
    results = _post(env, agent, [third, first, second])
    assert [r["status"] for r in results] == ["duplicate"] * 3
    assert set(_bodies(env)) == {first["id"], second["id"], third["id"]}
    assert _counted(env) == 3  # each stored violation counted once, repeats never


def test_a_bad_event_among_good_ones_is_rejected_alone_with_its_reason(env: DashboardEnv) -> None:
    agent = env.enroll()
    good = [event() for _ in range(6)]
    too_long = event(rule="r" * (MAX_STRING + 1))
    unknown_field = {**event(), "surprise": 1}
    not_an_event = {"id": "not-a-uuid", "kind": "process"}
    nul = event(process={"pid": 1, "name": "a\x00b"})
    items = [good[0], too_long, good[1], unknown_field, good[2], not_an_event, good[3], nul]
    items += good[4:]
    results = _post(env, agent, items)
    assert [r["status"] for r in results] == [
        "stored", "rejected", "stored", "rejected", "stored", "rejected", "stored", "rejected",
        "stored", "stored",
    ]  # fmt: skip
    assert results[1]["id"] == too_long["id"] and results[1]["error"].startswith("rule:")
    assert results[3]["error"].startswith("surprise:")
    assert results[5]["id"] == "not-a-uuid" and results[5]["error"].startswith("id:")
    assert results[7]["error"].startswith("process.name:")
    assert set(_bodies(env)) == {g["id"] for g in good}
    assert _counted(env) == 6


def test_insert_events_stores_a_body_given_as_text_or_as_object_the_same(
    env: DashboardEnv,
) -> None:
    """Callers other than ingest (benchmarks, forwarding tests) pass the body as JSON text."""
    body = {"id": "x", "process": AWKWARD}
    rows = []
    for form in (body, body_text(body)):
        rows.append(
            {
                "event_id": str(uuid.uuid4()),
                "agent_id": "a",
                "time_us": 1_700_000_000_000_000,
                "received_us": 1_700_000_000_000_000,
                "hostname": "h",
                "username": "u",
                "rule": "r",
                "kind": "process",
                "action": "killed",
                "severity": "high",
                "body": form,
            }
        )
    with env.db.write() as conn:
        assert insert_events(conn, rows) == {r["event_id"] for r in rows}
        assert insert_events(conn, rows) == set()  # both duplicates now
    stored = _bodies(env)
    assert stored[rows[0]["event_id"]] == stored[rows[1]["event_id"]] == body_text(body)


# --- the validator ingest judges with: EventIn's rules, into plain dicts ----------------------

_SEEDS = [
    event(process=AWKWARD, host={"hostname": "h", "os": "linux"}),
    event(kind="dns", action="sinkholed", dns={"qname": "chat.deepseek.com", "qtype": "A"}),
    event(
        kind="file",
        action="quarantined",
        file={"path": "/m.gguf", "owner": "bob", "size": 3, "model": {"evidence": ["gguf"]}},
    ),
    {**event(kind="tamper", action="reported"), "detail": "d", "count": 2},
]
_VALUES: list[Any] = [
    None, 0, -1, 1.0, 1.5, 2**60, True, "", "x", "a\x00b", "\ud800", "Z" * 5000, [], ["a"],
    [1], {}, {"a": 1}, "2025-01-01T00:00:00Z", "low", "killed", "process",
    "0001-01-01T00:00:00+01:00",
]  # fmt: skip
_KEYS = [
    "id", "time", "kind", "rule", "policy", "action", "severity", "host", "process", "dns",
    "file", "detail", "count", "extra", "pid", "name", "cmdline", "user", "qname", "path",
    "model", "evidence", "serial", "owner", "hostname", "start_time", "size",
]  # fmt: skip


def _mutant(rng: random.Random) -> dict[str, Any]:
    item = copy.deepcopy(rng.choice(_SEEDS))
    for _ in range(rng.randint(1, 3)):
        target = item
        nested = [k for k, v in target.items() if isinstance(v, dict)]
        if nested and rng.random() < 0.5:
            target = target[rng.choice(nested)]
        roll = rng.random()
        if roll < 0.4 and target:
            target[rng.choice(list(target))] = rng.choice(_VALUES)
        elif roll < 0.6 and target:
            del target[rng.choice(list(target))]
        else:
            target[rng.choice(_KEYS)] = rng.choice(_VALUES)
    return item


def _verdict(validator: Any, item: dict[str, Any]) -> Any:
    try:
        return ("valid", validator.validate_python(item))
    except ValidationError as err:
        # a section that is not an object: "a valid dictionary" (and not "or instance of X")
        return ("invalid", [(e["loc"], e["msg"].split(" or instance of")[0]) for e in err.errors()])


def test_the_ingest_validator_accepts_and_refuses_exactly_what_eventin_does() -> None:
    rng = random.Random(16)
    valid = 0
    for _ in range(4000):
        item = _mutant(rng)
        mine, theirs = _verdict(EVENT_DICT, item), _verdict(EventIn.__pydantic_validator__, item)
        assert mine[0] == theirs[0], item
        if mine[0] == "valid":
            valid += 1
            assert mine[1] == item  # nothing coerced, nothing added (no defaults filled in)
        else:
            assert mine[1] == theirs[1], item
    assert 200 < valid < 3800  # both verdicts were exercised
    assert all(_verdict(EVENT_DICT, s)[0] == "valid" for s in _SEEDS)


_ENVELOPES: list[Any] = [
    {"events": []},
    {"events": [{}, {"id": 1}]},
    {"events": [{}] * MAX_EVENTS_PER_BATCH},
    {"events": [{}] * (MAX_EVENTS_PER_BATCH + 1)},
    {"events": [{}], "extra": 1},
    {"events": {}},
    {"events": None},
    {"events": [{}, "not an object", 3]},
    {"events": [[]]},
    {"Events": []},
    {},
    [],
    "events",
    None,
]


@pytest.mark.parametrize("envelope", _ENVELOPES)
def test_parse_batch_takes_and_refuses_the_envelopes_eventbatch_does(envelope: Any) -> None:
    try:
        expected: Any = EventBatch.model_validate(envelope).events
    except ValidationError as err:
        expected = ("invalid_batch", validation_detail(err.errors()))
    try:
        got: Any = parse_batch(json.dumps(envelope).encode())
    except ApiError as err:
        got = (err.error, err.detail)
        assert err.status == 422
    assert got == expected
