"""Upgrades: an agent of an earlier release talks to this collector.

Every ``tests/data/wire/agent-*.json`` is a release's agent requests recorded byte for byte
(``tests.support.wire_fixture``); each is replayed against the current collector on a clock set
to the recording time, so the recorded signatures are checked as they were made. There is no
release before 0.1.0, so today the one file is 0.1.0's own format: the test proves the
mechanism and guards the format from here on (docs/operations.md).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage.tables import agents, enroll_secrets, events, hosts
from tests.support.clock import ManualClock

WIRE = Path(__file__).resolve().parents[1] / "data" / "wire"
FIXTURES = sorted(WIRE.glob("agent-*.json"))


def test_there_is_a_recording_of_this_release() -> None:
    from proscribe.core import __version__

    assert (WIRE / f"agent-{__version__}.json").is_file(), (
        f"record it: python -m tests.support.wire_fixture tests/data/wire/agent-{__version__}.json"
    )


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_an_older_agent_is_understood(tmp_path: Path, fixture: Path) -> None:
    recorded = json.loads(fixture.read_text())
    clock = ManualClock(recorded["recorded_at"] + 1)
    settings = settings_from_mapping({"database": {"url": f"sqlite:///{tmp_path / 'c.db'}"}})
    app = create_app(settings, clock=clock)
    sent_events: list[dict[str, Any]] = []
    with TestClient(app) as client:
        db = app.state.collector.db
        with db.write() as conn:
            digest = hashlib.sha256(recorded["enroll_secret"].encode()).hexdigest()
            conn.execute(
                insert(enroll_secrets).values(
                    secret_id="wire",
                    secret_sha256=digest,
                    label="wire",
                    created_us=0,
                    revoked_us=None,
                )
            )
            # as if it had enrolled under this id with the recording's key
            conn.execute(
                insert(agents).values(
                    agent_id=recorded["agent_id"],
                    public_key=recorded["public_key"],
                    hostname="ws-old",
                    os="linux",
                    agent_version=recorded["agent_version"],
                    enrolled_us=0,
                    enroll_secret_id="wire",
                    revoked_us=None,
                )
            )
        for request in recorded["requests"]:
            body = base64.b64decode(request["body_b64"])
            reply = client.request(
                request["method"], request["path"], content=body, headers=request["headers"]
            )
            where = f"{fixture.name} {request['method']} {request['path']}"
            assert reply.status_code < 300 or (
                request["path"] == "/api/v1/policy" and reply.status_code == 404
            ), (where, reply.status_code, reply.text)
            if request["path"] == "/api/v1/enroll":
                # the key is known: re-enrolling returns its id, as for any agent
                assert reply.json()["agent_id"] == recorded["agent_id"], where
            if request["path"] == "/api/v1/events":
                raw = gzip.decompress(body) if request["headers"].get("Content-Encoding") else body
                sent_events = json.loads(raw)["events"]
                assert {r["status"] for r in reply.json()["results"]} == {"stored"}, reply.text
        with db.read() as conn:
            stored = {r.event_id: json.loads(r.body) for r in conn.execute(select(events))}
            host = conn.execute(select(hosts)).one()
    assert len(sent_events) >= 5 and set(stored) == {e["id"] for e in sent_events}
    for event in sent_events:
        kept = stored[event["id"]]
        for key, value in event.items():
            if key != "host":
                assert kept[key] == value, (event["id"], key)
    assert host.agent_id == recorded["agent_id"] and host.policy_serial == 2
