"""Heartbeats in batches on PostgreSQL (storage.heartbeat_batch): the guarantees of a single
heartbeat hold for every member of a batch, on a real PostgreSQL.

A replayed nonce, a revoked agent or a value the database refuses fails that heartbeat alone;
the same agent twice goes to the next batch, in order; two replicas heartbeating the same
agents keep the serial-regression flag right; a database error answers every member and the
batch after it works; a revoked agent whose key the replica cached is refused."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.guard import API_CSP
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.heartbeat_batch import (
    HeartbeatFlusher,
    HeartbeatOutcome,
    PendingHeartbeat,
)
from proscribe.collector.storage.hosts import HeartbeatRecord
from proscribe.collector.storage.policies import StoredPolicy, current_policy_ref, store_policy
from proscribe.collector.storage.signers import add_signer, list_signers, retire_signer
from proscribe.collector.storage.tables import agents, host_history, hosts
from tests.support.clock import ManualClock
from tests.support.collector_app import AgentKey, InProcessCollector
from tests.support.postgres import ADMIN_DSN, throwaway_database
from tests.support.waits import wait_for

pytestmark = pytest.mark.postgres


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def template() -> Iterator[tuple[str, str]]:
    """A migrated database with one enroll secret, copied for each test (CREATE DATABASE …
    TEMPLATE); yields (its name, the secret)."""
    with throwaway_database("proscribe_hbtpl") as url:
        db = open_database(url)
        upgrade(db)
        with db.write() as conn:
            _sid, secret = agent_store.create_enroll_secret(conn, "test", 0)
        db.dispose()
        yield url.rsplit("/", 1)[1], secret


@pytest.fixture
def url(template: tuple[str, str]) -> Iterator[str]:
    name = f"proscribe_hb_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template[0]}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Replica(InProcessCollector):
    secret: str

    def enroll(self, hostname: str = "ws-17") -> AgentKey:
        return self.enroll_agent(self.secret, hostname)

    def heartbeat(self, agent: AgentKey, serial: int | None, **over: Any) -> Any:
        return self.signed(*agent, "POST", "/api/v1/heartbeat", _body(serial, **over))


def _body(serial: int | None, **over: Any) -> bytes:
    body: dict[str, Any] = {
        "agent_version": "0.1.0",
        "hostname": "ws-17",
        "os": "linux",
        "mode": "enforce",
        "sensors": {"process": "netlink"},
        "spool": {"depth": 0, "bytes": 0, "dropped": 0},
        **over,
    }
    if serial is not None:
        body["policy"] = {"id": "p", "serial": serial, "sha256": "ab" * 32, "stale": False}
    return json.dumps(body).encode()


@pytest.fixture
def replicas(url: str, template: tuple[str, str], clock: ManualClock) -> Iterator[list[Replica]]:
    """Two collector apps (two replicas, each with its own flusher) on one database."""
    settings = settings_from_mapping(
        {"database": {"url": url}, "enroll": {"per_ip_burst": 100, "global_burst": 100}}
    )
    with ExitStack() as stack:
        out = []
        for _ in range(2):
            app = create_app(settings, clock=clock, migrate=False)
            client = stack.enter_context(TestClient(app))
            out.append(Replica(app, client, clock, template[1]))
        yield out


def _host(replica: Replica, agent_id: str) -> Any:
    with replica.db.read() as conn:
        return conn.execute(select(hosts).where(hosts.c.agent_id == agent_id)).one_or_none()


# --- over HTTP ----------------------------------------------------------------------------


def test_heartbeat_takes_the_batch_path_and_keeps_host_table_and_regression(
    replicas: list[Replica],
) -> None:
    one = replicas[0]
    assert one.state.heartbeats is not None  # PostgreSQL: the flusher writes heartbeats
    agent = one.enroll()
    for serial, expect in ((5, False), (7, False), (6, True), (None, True), (7, False)):
        resp = one.heartbeat(agent, serial)
        assert resp.status_code == 200, resp.text
        assert resp.json()["policy"] == {"serial": None, "sha256": None}
        assert bool(_host(one, agent[0]).serial_regressed) is expect, serial
    row = _host(one, agent[0])
    assert (row.policy_serial, row.max_policy_serial, row.hostname) == (7, 7, "ws-17")
    with one.db.read() as conn:
        kinds = [r.kind for r in conn.execute(select(host_history.c.kind))]
    assert kinds[0] == "first" and kinds.count("changed") == 4


def test_heartbeat_answer_names_the_current_policy_and_the_signers_in_order(
    replicas: list[Replica],
) -> None:
    one = replicas[0]
    agent = one.enroll()
    with one.db.write() as conn:
        add_signer(conn, "k2", name="Bob", role="", added_by="t", now_us=2)
        add_signer(conn, "k1", name="Ann", role="security", added_by="t", now_us=1)
        retire_signer(conn, "k2", 3)
        for serial in (3, 4):
            store_policy(conn, StoredPolicy(serial, "p", f"{serial}" * 64, b"x", b"s", 1, "t"))
        with_names = {s.keyid: s.describe() for s in list_signers(conn)}
        ref = current_policy_ref(conn)
    answer = one.heartbeat(agent, 1).json()
    assert answer["policy"] == {"serial": 4, "sha256": "4" * 64} and ref == (4, "4" * 64)
    assert list(answer["signers"].items()) == list(with_names.items())
    assert answer["signers"] == {"k1": "Ann (security)", "k2": "Bob, retired"}


def test_the_fast_path_answers_as_the_route_would(replicas: list[Replica]) -> None:
    """HeartbeatFastPath skips the router: its errors still are the API's JSON errors with the
    security headers, and the metrics still count the route."""
    one = replicas[0]
    agent_id, key = one.enroll()
    big = one.signed(agent_id, key, "POST", "/api/v1/heartbeat", b"{" + b" " * 70_000 + b"}")
    assert big.status_code == 413 and "error" in big.json()
    assert big.headers["content-security-policy"] == API_CSP
    assert big.headers["cache-control"] == "no-store"
    text = one.signed(
        agent_id, key, "POST", "/api/v1/heartbeat", _body(1), headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    stale = one.signed(
        agent_id, key, "POST", "/api/v1/heartbeat", _body(1), now=one.clock.now + 400
    )
    assert stale.status_code == 401 and stale.json()["error"] == "stale_request"
    assert one.client.get("/api/v1/heartbeat").status_code == 405  # the router's answer
    ok = one.heartbeat((agent_id, key), 1)
    assert ok.status_code == 200 and ok.headers["x-frame-options"] == "DENY"
    counted = one.state.metrics.requests
    assert counted[("POST", "/api/v1/heartbeat", 200)] == 1
    assert counted[("POST", "/api/v1/heartbeat", 413)] == 1


def test_heartbeat_renames_the_agent_and_an_empty_hostname_keeps_the_enrolled_one(
    replicas: list[Replica],
) -> None:
    one = replicas[0]
    agent = one.enroll("ws-17")
    assert one.heartbeat(agent, 1, hostname="").status_code == 200
    assert _host(one, agent[0]).hostname == "ws-17"  # the agent did not say: enrolled name
    assert one.heartbeat(agent, 1, hostname="ws-18").status_code == 200
    with one.db.read() as conn:
        named = conn.execute(select(agents.c.hostname)).scalar_one()
    assert (named, _host(one, agent[0]).hostname) == ("ws-18", "ws-18")


def test_replayed_heartbeat_is_refused_on_the_other_replica(replicas: list[Replica]) -> None:
    one, two = replicas
    agent_id, key = one.enroll()
    nonce = uuid.uuid4().hex
    body = _body(3)
    first = one.signed(agent_id, key, "POST", "/api/v1/heartbeat", body, nonce=nonce)
    assert first.status_code == 200
    again = two.signed(agent_id, key, "POST", "/api/v1/heartbeat", body, nonce=nonce)
    assert again.status_code == 401 and again.json()["error"] == "replayed_nonce"


def test_revoked_agent_with_a_cached_key_is_refused_on_its_next_heartbeat(
    replicas: list[Replica],
) -> None:
    one = replicas[0]
    agent = one.enroll()
    assert one.heartbeat(agent, 1).status_code == 200
    assert one.state.authenticator.cached_key(agent[0]) is not None  # the fast path from now
    with one.db.write() as conn:
        agent_store.revoke_agent(conn, agent[0], 1)
    for _ in range(2):  # the batch refuses it, then the full look-up does
        resp = one.heartbeat(agent, 2)
        assert resp.status_code == 401 and resp.json()["error"] == "revoked_agent"
        assert one.state.authenticator.cached_key(agent[0]) is None
    assert _host(one, agent[0]).policy_serial == 1  # the refused heartbeats wrote nothing


def test_a_starting_replica_loads_the_keys_of_enrolled_agents_not_the_revoked(
    replicas: list[Replica], template: tuple[str, str], url: str, clock: ManualClock
) -> None:
    one = replicas[0]
    kept, revoked, later = one.enroll("ws-kept"), one.enroll("ws-revoked"), one.enroll("ws-l")
    with one.db.write() as conn:
        agent_store.revoke_agent(conn, revoked[0], 1)
    settings = settings_from_mapping({"database": {"url": url}})
    app = create_app(settings, clock=clock, migrate=False)
    with TestClient(app) as client:
        new = Replica(app, client, clock, template[1])
        auth = new.state.authenticator
        assert wait_for(lambda: auth.cached_key(kept[0]) is not None)
        assert auth.cached_key(revoked[0]) is None
        # Revoked after the replica loaded its key: refused by the heartbeat's batch.
        assert auth.cached_key(later[0]) is not None
        with new.db.write() as conn:
            agent_store.revoke_agent(conn, later[0], 2)
        for agent in (later, revoked):
            resp = new.heartbeat(agent, 1)
            assert resp.status_code == 401 and resp.json()["error"] == "revoked_agent"
        assert new.heartbeat(kept, 1).status_code == 200
    assert _host(one, later[0]) is None and _host(one, revoked[0]) is None


def test_deleted_agent_with_a_cached_key_is_unknown(replicas: list[Replica]) -> None:
    one = replicas[0]
    agent = one.enroll()
    assert one.heartbeat(agent, 1).status_code == 200
    with one.db.write() as conn:
        conn.execute(agents.delete().where(agents.c.agent_id == agent[0]))
    resp = one.heartbeat(agent, 2)
    assert resp.status_code == 401 and resp.json()["error"] == "unknown_agent"


def test_two_replicas_heartbeating_the_same_agents_keep_serial_regressed_right(
    replicas: list[Replica],
) -> None:
    """Each agent heartbeats in turn (as an agent does), alternating replicas; twelve agents
    at once. Serials only rise: nobody is flagged; then half roll back: exactly those are."""
    fleet = [replicas[0].enroll(f"ws-{i}") for i in range(12)]
    errors: list[str] = []

    def agent_life(index: int, agent: AgentKey) -> None:
        serials = [1, 2, 3, 4, 5, 6] + ([2] if index % 2 else [])
        for step, serial in enumerate(serials):
            resp = replicas[(index + step) % 2].heartbeat(agent, serial, hostname=f"ws-{index}")
            if resp.status_code != 200:
                errors.append(resp.text)

    threads = [threading.Thread(target=agent_life, args=(i, a)) for i, a in enumerate(fleet)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index, (agent_id, _key) in enumerate(fleet):
        row = _host(replicas[0], agent_id)
        assert row.max_policy_serial == 6
        assert bool(row.serial_regressed) is bool(index % 2), index
        assert row.policy_serial == (2 if index % 2 else 6)


def test_database_error_answers_500_and_the_next_heartbeat_is_stored(
    replicas: list[Replica], url: str
) -> None:
    one = replicas[0]
    agent = one.enroll()
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_DSN.replace("dbname=test", f"dbname={database}")) as conn:
        conn.execute("ALTER TABLE nonces RENAME TO nonces_away")
        conn.commit()
        resp = one.heartbeat(agent, 1)
        assert resp.status_code == 500 and resp.json()["error"] == "internal_error"
        conn.execute("ALTER TABLE nonces_away RENAME TO nonces")
        conn.commit()
    resp = one.heartbeat(agent, 2)
    assert resp.status_code == 200, resp.text
    assert _host(one, agent[0]).policy_serial == 2


def test_dropped_connection_is_replaced_without_an_error(replicas: list[Replica], url: str) -> None:
    """A PostgreSQL restart drops the flusher's long-lived connection: the batch is tried
    once more on a new one, and the agent never hears of it."""
    one = replicas[0]
    agent = one.enroll()
    assert one.heartbeat(agent, 1).status_code == 200
    database = url.rsplit("/", 1)[1]
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
        f"'{database}' AND pid <> pg_backend_pid()"
    )
    resp = one.heartbeat(agent, 2)
    assert resp.status_code == 200, resp.text
    assert _host(one, agent[0]).policy_serial == 2


# --- the flusher's batches, formed on purpose -----------------------------------------------


def _record(agent_id: str, serial: int, os_name: str = "linux") -> HeartbeatRecord:
    return HeartbeatRecord(
        agent_id=agent_id,
        hostname="",
        os=os_name,
        agent_version="0.1.0",
        mode="enforce",
        policy_id="p",
        policy_serial=serial,
        policy_sha256="ab" * 32,
        policy_stale=False,
        sensors={},
        spool_depth=0,
        spool_bytes=0,
        dropped=0,
        agent_time=None,
    )


def _pending(agent_id: str, serial: int, nonce: str | None = None, **over: Any) -> PendingHeartbeat:
    return PendingHeartbeat(_record(agent_id, serial, **over), nonce or uuid.uuid4().hex, 2**60)


def _one_batch(flusher: HeartbeatFlusher, batch: list[PendingHeartbeat]) -> list[Any]:
    """Queue every heartbeat of ``batch`` before the flusher starts, so that its first batch
    holds them all (as under load); the outcomes, or the errors, in order."""

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(flusher.submit(p)) for p in batch]
        await asyncio.sleep(0.05)  # every task has queued its heartbeat
        flusher.start()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        return asyncio.run(run())
    finally:
        flusher.stop()


@pytest.fixture
def fleet(replicas: list[Replica]) -> list[str]:
    return [replicas[0].enroll(f"ws-{i}")[0] for i in range(5)]


def _flusher(replica: Replica) -> HeartbeatFlusher:
    return HeartbeatFlusher(replica.db, now_us=replica.state.now_us, window_us=None)


def test_a_replayed_nonce_in_a_batch_refuses_that_heartbeat_only(
    replicas: list[Replica], fleet: list[str]
) -> None:
    one = replicas[0]
    used = uuid.uuid4().hex
    assert _one_batch(_flusher(one), [_pending(fleet[0], 1, used)])[0].refused is None
    flusher = _flusher(one)
    batch = [_pending(a, 2) for a in fleet[1:]] + [_pending(fleet[0], 9, used)]
    outcomes = _one_batch(flusher, batch)
    assert flusher.batches == 1 and flusher.largest == 5
    assert [o.refused for o in outcomes] == [None, None, None, None, "replayed_nonce"]
    assert [_host(one, a).policy_serial for a in fleet] == [1, 2, 2, 2, 2]  # replay: nothing


def test_the_same_agent_twice_goes_to_the_next_batch_in_order(
    replicas: list[Replica], fleet: list[str]
) -> None:
    one = replicas[0]
    flusher = _flusher(one)
    batch = [_pending(fleet[0], 5), _pending(fleet[1], 5), _pending(fleet[0], 3)]
    outcomes: list[HeartbeatOutcome] = _one_batch(flusher, batch)
    assert flusher.batches == 2 and flusher.largest == 2
    assert [(o.refused, o.regressed) for o in outcomes] == [
        (None, False),
        (None, False),
        (None, True),
    ]
    row = _host(one, fleet[0])
    assert (row.policy_serial, row.max_policy_serial, bool(row.serial_regressed)) == (3, 5, True)


def test_the_same_nonce_twice_in_the_queue_is_stored_once(
    replicas: list[Replica], fleet: list[str]
) -> None:
    one = replicas[0]
    nonce = uuid.uuid4().hex
    outcomes = _one_batch(
        _flusher(one), [_pending(fleet[0], 1, nonce), _pending(fleet[1], 1, nonce)]
    )
    assert [o.refused for o in outcomes] == [None, "replayed_nonce"]
    assert _host(one, fleet[1]) is None


def test_revoked_and_unknown_agents_in_a_batch_are_refused_alone(
    replicas: list[Replica], fleet: list[str]
) -> None:
    one = replicas[0]
    with one.db.write() as conn:
        agent_store.revoke_agent(conn, fleet[2], 1)
    batch = [_pending(a, 1) for a in fleet] + [_pending("not-enrolled", 1)]
    outcomes = _one_batch(_flusher(one), batch)
    assert [o.refused for o in outcomes] == [
        None, None, "revoked_agent", None, None, "unknown_agent",
    ]  # fmt: skip
    assert _host(one, fleet[2]) is None and _host(one, fleet[3]) is not None


def test_a_value_the_database_refuses_fails_its_heartbeat_alone(
    replicas: list[Replica], fleet: list[str], url: str
) -> None:
    """The batch is rolled back and each heartbeat written alone: the refused one answers
    its error, the others are stored once (not lost, not doubled), and the next batch works."""
    one = replicas[0]
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_DSN.replace("dbname=test", f"dbname={database}")) as conn:
        conn.execute("ALTER TABLE hosts ADD CONSTRAINT no_explode CHECK (os <> 'explode')")
        conn.commit()
    batch = [_pending(a, 1) for a in fleet[:3]]
    batch[1] = replace(batch[1], record=_record(fleet[1], 1, os_name="explode"))
    outcomes = _one_batch(_flusher(one), batch)
    assert isinstance(outcomes[1], IntegrityError)
    assert [o.refused for o in (outcomes[0], outcomes[2])] == [None, None]
    assert _host(one, fleet[1]) is None
    with one.db.read() as conn:
        first = [r.agent_id for r in conn.execute(select(host_history.c.agent_id))]
    assert sorted(first) == sorted([fleet[0], fleet[2]])  # one history row each
    again = _one_batch(_flusher(one), [_pending(a, 2) for a in fleet])
    assert [o.refused for o in again] == [None] * 5


def test_every_member_answers_a_database_outage_and_the_next_batch_works(
    replicas: list[Replica], fleet: list[str], url: str
) -> None:
    one = replicas[0]
    database = url.rsplit("/", 1)[1]
    dsn = ADMIN_DSN.replace("dbname=test", f"dbname={database}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE host_history RENAME TO away")
    outcomes = _one_batch(_flusher(one), [_pending(a, 1) for a in fleet])
    assert all(isinstance(o, Exception) for o in outcomes)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE away RENAME TO host_history")
    # nothing of the failed batch was kept, nonces included: the same heartbeats now pass
    again = _one_batch(_flusher(one), [_pending(a, 1) for a in fleet])
    assert [o.refused for o in again] == [None] * 5
    assert all(_host(one, a).policy_serial == 1 for a in fleet)


def test_a_failed_batch_kept_no_nonce(replicas: list[Replica], fleet: list[str], url: str) -> None:
    one = replicas[0]
    dsn = ADMIN_DSN.replace("dbname=test", f"dbname={url.rsplit('/', 1)[1]}")
    batch = [_pending(a, 1) for a in fleet]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE host_history RENAME TO away")
    assert all(isinstance(o, Exception) for o in _one_batch(_flusher(one), batch))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE away RENAME TO host_history")
    # the agents' retry of the very same requests (same nonces) is stored
    assert [o.refused for o in _one_batch(_flusher(one), batch)] == [None] * 5
