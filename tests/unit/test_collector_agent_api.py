"""The agent API in-process (FastAPI TestClient): enrollment, signed requests, ingest limits,
validation, duplicates, heartbeat and policy GET. Real SQLite in a temp dir; no mocks."""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.tables import events, hosts
from proscribe.core.events import MAX_STRING, new_event
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request
from tests.support.clock import ManualClock
from tests.support.collector_app import AgentKey, InProcessCollector


@dataclass
class AgentApiEnv(InProcessCollector):
    """The collector in-process with one enroll secret and no agents yet."""

    secret: str

    def enroll(
        self, key: Ed25519PrivateKey | None = None, *, hostname: str = "ws-17", **over: Any
    ) -> AgentKey:
        return self.enroll_agent(self.secret, hostname, key, **over)

    def stored(self) -> int:
        with self.state.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Migrate once per module; each test gets a copy of the file."""
    path = tmp_path_factory.mktemp("template") / "c.db"
    db = open_database(f"sqlite:///{path}")
    upgrade(db)
    with db.write() as conn:
        _sid, secret = agent_store.create_enroll_secret(conn, "test", 0)
    with db.write() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return path, secret


@pytest.fixture
def env(tmp_path: Path, template: tuple[Path, str], clock: ManualClock) -> Iterator[AgentApiEnv]:
    shutil.copyfile(template[0], tmp_path / "c.db")
    settings = settings_from_mapping(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
            "enroll": {"per_ip_burst": 5, "per_ip_rate": 0.01, "global_burst": 50},
        }
    )
    app = create_app(settings, clock=clock, migrate=False)
    with TestClient(app) as client:
        yield AgentApiEnv(app, client, clock, template[1])


def _events(n: int, **over: Any) -> list[dict[str, Any]]:
    return [
        new_event(
            "process",
            rule="deepseek-desktop",
            action="killed",
            process={"pid": 100 + i, "name": "dsh", "user": "alice", "cmdline": ["dsh", "-x"]},
            **over,
        )
        for i in range(n)
    ]


def _batch(evs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"events": evs}).encode()


# --- enrollment ---------------------------------------------------------------------------


def test_enroll_then_signed_events_are_stored_once(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    evs = _events(3)
    first = env.signed(agent_id, key, "POST", "/api/v1/events", _batch(evs))
    assert first.status_code == 200
    assert [r["status"] for r in first.json()["results"]] == ["stored"] * 3
    again = env.signed(agent_id, key, "POST", "/api/v1/events", _batch(evs))
    assert [r["status"] for r in again.json()["results"]] == ["duplicate"] * 3
    assert env.stored() == 3


def test_bad_enroll_secret_is_401_json(env: AgentApiEnv) -> None:
    key = Ed25519PrivateKey.generate()
    resp = env.client.post(
        "/api/v1/enroll",
        json={
            "secret": "pse_wrong",
            "hostname": "h",
            "os": "linux",
            "agent_version": "1",
            "public_key": public_key_string(key.public_key()),
        },
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "bad_secret"


def test_revoked_enroll_secret_no_longer_enrolls(env: AgentApiEnv) -> None:
    with env.state.db.write() as conn:
        sid, secret = agent_store.create_enroll_secret(conn, "second", 0)
        assert agent_store.revoke_enroll_secret(conn, sid, 1)
    key = Ed25519PrivateKey.generate()
    body = {"hostname": "h", "os": "l", "agent_version": "1"}
    body["public_key"] = public_key_string(key.public_key())
    assert env.client.post("/api/v1/enroll", json={**body, "secret": secret}).status_code == 401
    # The first secret is still active beside it (rotation).
    assert env.client.post("/api/v1/enroll", json={**body, "secret": env.secret}).status_code == 200


def test_enroll_public_key_is_never_read_as_a_path(env: AgentApiEnv) -> None:
    resp = env.client.post(
        "/api/v1/enroll",
        json={
            "secret": env.secret,
            "hostname": "h",
            "os": "l",
            "agent_version": "1",
            "public_key": "/etc/passwd",
        },
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_public_key"


def test_enrollment_flood_gets_429_with_retry_after(env: AgentApiEnv) -> None:
    statuses = []
    for _ in range(8):
        resp = env.client.post("/api/v1/enroll", json={"secret": "nope"})
        statuses.append(resp.status_code)
    assert 429 in statuses
    limited = env.client.post("/api/v1/enroll", json={"secret": "nope"})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


def test_database_holds_no_usable_credential(env: AgentApiEnv) -> None:
    env.enroll()
    with env.state.db.read() as conn:
        dump = json.dumps(
            [
                list(map(str, r))
                for t in ("enroll_secrets", "agents")
                for r in conn.exec_driver_sql(f"SELECT * FROM {t}")
            ]
        )
    assert env.secret not in dump
    assert "PRIVATE" not in dump


# --- signatures -----------------------------------------------------------------------------


def test_unknown_agent_is_told_so(env: AgentApiEnv) -> None:
    key = Ed25519PrivateKey.generate()
    resp = env.signed("f" * 32, key, "POST", "/api/v1/events", _batch(_events(1)))
    assert resp.status_code == 401
    assert resp.json()["error"] == "unknown_agent"


def test_revoked_agent_is_told_so_and_only_a_new_key_reenrolls(env: AgentApiEnv) -> None:
    """Without a machine id there is no machine to ban: a new key enrolls (the agent makes
    one on ``revoked_agent``); the revoked key itself never again (issue 13)."""
    agent_id, old_key = env.enroll()
    with env.state.db.write() as conn:
        agent_store.revoke_agent(conn, agent_id, 1)
    resp = env.signed(agent_id, old_key, "POST", "/api/v1/events", _batch(_events(1)))
    assert resp.status_code == 401
    assert resp.json()["error"] == "revoked_agent"
    body = {
        "secret": env.secret,
        "hostname": "ws-17",
        "os": "linux",
        "agent_version": "0.1.0",
        "public_key": public_key_string(old_key.public_key()),
    }
    again = env.client.post("/api/v1/enroll", json=body)
    assert again.status_code == 403 and again.json()["error"] == "revoked_key"
    new_id, key = env.enroll()
    assert new_id != agent_id
    evs = _events(1)
    evs[0]["host"] = {"agent_id": agent_id, "hostname": "ws-17", "os": "linux"}  # spooled earlier
    ok = env.signed(new_id, key, "POST", "/api/v1/events", _batch(evs))
    assert ok.json()["results"][0]["status"] == "stored"


@pytest.mark.parametrize("offset", [301, -301, 5000])
def test_skewed_time_is_stale_request(env: AgentApiEnv, offset: int) -> None:
    agent_id, key = env.enroll()
    resp = env.signed(
        agent_id, key, "POST", "/api/v1/events", _batch(_events(1)), now=env.clock.now + offset
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "stale_request"


def test_time_within_skew_is_accepted(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    resp = env.signed(
        agent_id, key, "POST", "/api/v1/events", _batch(_events(1)), now=env.clock.now - 299
    )
    assert resp.status_code == 200


def test_replayed_nonce_is_refused(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    nonce = uuid.uuid4().hex
    body = _batch(_events(1))
    assert env.signed(agent_id, key, "POST", "/api/v1/events", body, nonce=nonce).status_code == 200
    again = env.signed(agent_id, key, "POST", "/api/v1/events", body, nonce=nonce)
    assert again.status_code == 401
    assert again.json()["error"] == "replayed_nonce"


@pytest.mark.parametrize(
    ("path", "sign_path", "altered_body"),
    [
        ("/api/v1/events", "/api/v1/events", True),
        ("/api/v1/events?x=1", "/api/v1/events", False),
        ("/api/v1/events?x=2", "/api/v1/events?x=1", False),
        ("/api/v1/heartbeat", "/api/v1/events", False),
    ],
)
def test_altered_body_path_or_query_is_bad_signature(
    env: AgentApiEnv, path: str, sign_path: str, altered_body: bool
) -> None:
    agent_id, key = env.enroll()
    body = _batch(_events(1))
    signed_body = body.replace(b"alice", b"bobby") if altered_body else body
    resp = env.signed(agent_id, key, "POST", path, body, sign_path=sign_path, sign_body=signed_body)
    assert resp.status_code == 401
    assert resp.json()["error"] == "bad_signature"
    assert env.stored() == 0


def test_signature_by_another_key_is_bad_signature(env: AgentApiEnv) -> None:
    agent_id, _key = env.enroll()
    other = Ed25519PrivateKey.generate()
    resp = env.signed(agent_id, other, "POST", "/api/v1/events", _batch(_events(1)))
    assert resp.status_code == 401
    assert resp.json()["error"] == "bad_signature"


def test_missing_signature_headers_are_401(env: AgentApiEnv) -> None:
    resp = env.client.post("/api/v1/events", content=_batch(_events(1)))
    assert resp.status_code == 401
    assert resp.json()["error"] == "bad_signature"


# --- body limits ----------------------------------------------------------------------------


def _big_batch(size: int) -> bytes:
    evs = []
    while len(json.dumps(evs)) < size:
        evs += _events(1, detail="x" * 8000)
    return _batch(evs[:500])


def test_body_over_1mib_is_413(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    body = b'{"events": [' + b" " * (1024 * 1024 + 10) + b"]}"
    resp = env.signed(agent_id, key, "POST", "/api/v1/events", body)
    assert resp.status_code == 413
    assert resp.json()["error"] == "too_large"


def test_lying_content_length_and_chunked_are_capped(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    body = b'{"events": [' + b" " * (1024 * 1024 + 10) + b"]}"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    sig = sign_request(key, agent_id, "POST", "/api/v1/events", body, now=env.clock.now)
    sig["Content-Type"] = "application/json"
    chunked = env.client.post("/api/v1/events", content=chunks(), headers=sig)
    assert chunked.status_code == 413


def test_gzip_bomb_is_413(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    bomb = gzip.compress(b'{"events": [' + b" " * (20 * 1024 * 1024) + b"]}")
    assert len(bomb) < 100_000
    resp = env.signed(
        agent_id, key, "POST", "/api/v1/events", bomb, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status_code == 413


def test_gzip_batch_is_accepted(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    body = gzip.compress(_batch(_events(5)))
    resp = env.signed(
        agent_id, key, "POST", "/api/v1/events", body, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status_code == 200
    assert env.stored() == 5


def test_truncated_gzip_is_422(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    body = gzip.compress(_batch(_events(5)))[:-12]
    resp = env.signed(
        agent_id, key, "POST", "/api/v1/events", body, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status_code == 422


# --- validation -----------------------------------------------------------------------------


def test_more_than_500_events_is_422(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    resp = env.signed(agent_id, key, "POST", "/api/v1/events", _batch(_events(501)))
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_batch"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{not utf8",
        b'{"events": [], "extra": 1}',
        b'{"events": {}}',
        b"[]",
        b'{"events": [NaN]}',
        b"",
        b"[" * 100_000,
    ],
)
def test_invalid_envelope_is_422_not_500(env: AgentApiEnv, body: bytes) -> None:
    agent_id, key = env.enroll()
    resp = env.signed(agent_id, key, "POST", "/api/v1/events", body)
    assert resp.status_code == 422
    assert "error" in resp.json()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rule", "a\x00b"),
        ("rule", "x" * (MAX_STRING + 1)),
        ("detail", "\ud800 lone"),
        ("unexpected", "field"),
        ("kind", "keylogger"),
        ("action", "nuked"),
        ("time", "yesterday"),
        ("time", "2025-01-28T09:14:03"),
        ("id", "not-a-uuid"),
        ("count", 0),
    ],
)
def test_bad_event_is_rejected_beside_good_ones(env: AgentApiEnv, field: str, value: Any) -> None:
    agent_id, key = env.enroll()
    good, bad = _events(2)
    bad[field] = value
    # json.dumps escapes NUL and lone surrogates as \u0000 / \ud800: exactly what a hostile
    # client can send as valid JSON.
    body = json.dumps({"events": [good, bad]}).encode()
    resp = env.signed(agent_id, key, "POST", "/api/v1/events", body)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert results[0]["status"] == "stored"
    assert results[1]["status"] == "rejected"
    assert results[1]["error"]
    assert env.stored() == 1


def test_extra_nested_field_and_long_cmdline_are_rejected(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    a, b = _events(2)
    a["process"]["secret_sauce"] = 1
    b["process"]["cmdline"] = ["x"] * 257
    resp = env.signed(agent_id, key, "POST", "/api/v1/events", _batch([a, b]))
    assert [r["status"] for r in resp.json()["results"]] == ["rejected", "rejected"]


def test_repeated_id_inside_a_batch_is_stored_once(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    (ev,) = _events(1)
    resp = env.signed(agent_id, key, "POST", "/api/v1/events", _batch([ev, ev]))
    assert [r["status"] for r in resp.json()["results"]] == ["stored", "duplicate"]
    assert env.stored() == 1


def test_agent_can_only_speak_for_itself(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    victim_id, _ = env.enroll(hostname="victim")
    (ev,) = _events(1)
    ev["host"] = {"agent_id": victim_id, "hostname": "victim", "os": "linux"}
    env.signed(agent_id, key, "POST", "/api/v1/events", _batch([ev]))
    with env.state.db.read() as conn:
        row = conn.execute(select(events.c.agent_id, events.c.body)).one()
    assert row.agent_id == agent_id
    assert json.loads(row.body)["host"]["agent_id"] == agent_id


def test_hostile_strings_are_stored_literally(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    nasty = [
        "<script>alert(1)</script>",
        '"><img onerror=x>',
        "{{7*7}}",
        "\u202egnp.exe",
        "\x1b[2J",
    ]
    evs = _events(len(nasty))
    for ev, text in zip(evs, nasty, strict=True):
        ev["process"]["name"] = text
    env.signed(agent_id, key, "POST", "/api/v1/events", _batch(evs))
    with env.state.db.read() as conn:
        names = {json.loads(b)["process"]["name"] for (b,) in conn.execute(select(events.c.body))}
    assert names == set(nasty)


# --- heartbeat and policy ------------------------------------------------------------------


def _hb(serial: int | None, dropped: Any = 0) -> bytes:
    policy = None if serial is None else {"id": "p", "serial": serial, "sha256": "ab" * 32}
    return json.dumps(
        {
            "agent_version": "0.1.0",
            "hostname": "ws-17",
            "os": "linux",
            "mode": "enforce",
            "policy": policy,
            "sensors": {"process": "netlink", "dns": {"state": "ok", "qps": 3}},
            "spool": {"depth": 4, "bytes": 1000, "dropped": dropped},
            "time": "2025-01-28T09:14:03.120Z",
        }
    ).encode()


def test_heartbeat_keeps_host_table_and_flags_serial_regression(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    for serial, expect in ((5, False), (7, False), (6, True), (7, False)):
        resp = env.signed(agent_id, key, "POST", "/api/v1/heartbeat", _hb(serial, {"full": 2}))
        assert resp.status_code == 200, resp.text
        assert resp.json()["policy"] == {"serial": None, "sha256": None}
        assert resp.json()["heartbeat_interval"] == 60  # [server] heartbeat_interval
        with env.state.db.read() as conn:
            row = conn.execute(select(hosts)).one()
        assert bool(row.serial_regressed) is expect, serial
    assert row.dropped == 2
    assert row.spool_depth == 4
    assert row.policy_serial == 7


def test_heartbeat_with_nul_hostname_is_422(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    body = _hb(1).replace(b'"ws-17"', b'"ws\\u0000"')
    resp = env.signed(agent_id, key, "POST", "/api/v1/heartbeat", body)
    assert resp.status_code == 422


def test_policy_get_without_policy_is_404(env: AgentApiEnv) -> None:
    agent_id, key = env.enroll()
    resp = env.signed(agent_id, key, "GET", "/api/v1/policy")
    assert resp.status_code == 404
    assert resp.json()["error"] == "no_policy"


def test_policy_get_is_signed(env: AgentApiEnv) -> None:
    resp = env.client.get("/api/v1/policy")
    assert resp.status_code == 401


def test_expired_nonces_are_purged_once_a_minute(env: AgentApiEnv) -> None:
    from proscribe.collector.storage.tables import nonces

    agent_id, key = env.enroll()
    env.signed(agent_id, key, "POST", "/api/v1/events", _batch(_events(1)))
    with env.state.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(nonces)).scalar_one() == 1
    env.clock.now += 3600  # nonces expire after 2 x 300 s + 60 s; the purge is due
    env.client.get("/healthz")
    with env.state.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(nonces)).scalar_one() == 0
