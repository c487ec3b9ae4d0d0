"""The people's API in-process: roles × endpoints, violations filters, keyset pagination,
formula-safe CSV, host coverage, policy upload against the collector's trust, audit chain."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage import audit, open_database, upgrade
from proscribe.collector.storage.users import add_user
from proscribe.core.events import new_event
from proscribe.core.policy.envelope import sign_payload
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request
from tests.support.clock import ManualClock
from tests.support.collector_app import InProcessCollector

REPO = Path(__file__).resolve().parents[2]
PACK = (REPO / "policies" / "us-navy-deepseek-2025.toml").read_bytes()


@dataclass
class PeopleApiEnv(InProcessCollector):
    """The collector in-process with API tokens for a viewer and an admin, one enrolled agent
    and a policy signer the collector trusts."""

    viewer: str
    admin: str
    signer: Ed25519PrivateKey
    agent_id: str
    agent_key: Ed25519PrivateKey

    def get(self, path: str, token: str | None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(path, params=params, headers=headers)

    def ingest(self, evs: list[dict[str, Any]]) -> None:
        body = json.dumps({"events": evs}).encode()
        resp = self.signed(self.agent_id, self.agent_key, "POST", "/api/v1/events", body)
        assert resp.status_code == 200, resp.text
        assert all(r["status"] == "stored" for r in resp.json()["results"])

    def signed_get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.signed(self.agent_id, self.agent_key, "GET", path, headers=headers)


@dataclass(frozen=True)
class Template:
    path: Path
    viewer: str
    admin: str
    agent_id: str
    agent_key: Ed25519PrivateKey


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Migrate and create users once per module; each test gets a copy of the file."""
    path = tmp_path_factory.mktemp("template") / "c.db"
    db = open_database(f"sqlite:///{path}")
    upgrade(db)
    agent_key = Ed25519PrivateKey.generate()
    with db.write() as conn:
        _p, viewer = add_user(conn, "olivia", "viewer", 0)
        _p, admin = add_user(conn, "ivan", "admin", 0)
        agent_id = agent_store.enroll_agent(
            conn,
            public_key=public_key_string(agent_key.public_key()),
            hostname="ws-17",
            os_name="linux",
            agent_version="1",
            secret_id="x",
            now_us=0,
        )
    with db.write() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return Template(path, viewer, admin, agent_id, agent_key)


@pytest.fixture
def env(tmp_path: Path, template: Template, clock: ManualClock) -> Iterator[PeopleApiEnv]:
    signer = Ed25519PrivateKey.generate()
    shutil.copyfile(template.path, tmp_path / "c.db")
    settings = settings_from_mapping(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
            "policy": {"trusted_keys": [public_key_string(signer.public_key())], "threshold": 1},
            "server": {"heartbeat_window": 120},
        }
    )
    app = create_app(settings, clock=clock, migrate=False)
    with TestClient(app) as client:
        yield PeopleApiEnv(
            app,
            client,
            clock,
            template.viewer,
            template.admin,
            signer,
            template.agent_id,
            template.agent_key,
        )


def _signed_pack(key: Ed25519PrivateKey, serial: int) -> dict[str, str]:
    data = PACK.replace(b"serial  = 1\n", f"serial  = {serial}\n".encode(), 1)
    sig = sign_payload(data, key).to_bytes()
    return {
        "policy": base64.b64encode(data).decode(),
        "signature": base64.b64encode(sig).decode(),
    }


# --- roles ------------------------------------------------------------------------------------

READS = ["/api/v1/violations", "/api/v1/hosts"]
ADMIN_READS = ["/api/v1/enroll-secrets", "/api/v1/audit"]


@pytest.mark.parametrize("path", READS + ADMIN_READS)
def test_no_credential_is_401(env: PeopleApiEnv, path: str) -> None:
    resp = env.get(path, None)
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"


@pytest.mark.parametrize("path", READS + ADMIN_READS)
def test_wrong_token_is_401(env: PeopleApiEnv, path: str) -> None:
    assert env.get(path, "pst_forged").status_code == 401


@pytest.mark.parametrize("path", READS)
def test_viewer_and_admin_read_reports(env: PeopleApiEnv, path: str) -> None:
    assert env.get(path, env.viewer).status_code == 200
    assert env.get(path, env.admin).status_code == 200


@pytest.mark.parametrize("path", ADMIN_READS)
def test_viewer_cannot_read_admin_pages(env: PeopleApiEnv, path: str) -> None:
    assert env.get(path, env.viewer).status_code == 403
    assert env.get(path, env.admin).status_code == 200


@pytest.mark.parametrize("path", READS)
def test_agent_credential_cannot_read_reports(env: PeopleApiEnv, path: str) -> None:
    resp = env.signed_get(path)
    assert resp.status_code == 401


def test_viewer_cannot_write(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.viewer}"}
    assert (
        env.client.put("/api/v1/policy", json=_signed_pack(env.signer, 2), headers=auth).status_code
        == 403
    )
    assert env.client.post("/api/v1/enroll-secrets", json={}, headers=auth).status_code == 403
    assert env.client.delete("/api/v1/enroll-secrets/abc", headers=auth).status_code == 403
    assert env.client.post(f"/api/v1/agents/{env.agent_id}/revoke", headers=auth).status_code == 403


def test_admin_manages_secrets_and_agents_and_it_is_audited(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.admin}"}
    created = env.client.post("/api/v1/enroll-secrets", json={"label": "laptops"}, headers=auth)
    assert created.status_code == 200
    secret_id = created.json()["id"]
    listed = env.get("/api/v1/enroll-secrets", env.admin).json()["secrets"]
    assert [s["label"] for s in listed] == ["laptops"]
    assert created.json()["secret"] not in json.dumps(listed)
    assert env.client.delete(f"/api/v1/enroll-secrets/{secret_id}", headers=auth).status_code == 200
    assert env.client.delete(f"/api/v1/enroll-secrets/{secret_id}", headers=auth).status_code == 404
    resp = env.client.post(f"/api/v1/agents/{env.agent_id}/revoke", headers=auth)
    assert resp.status_code == 200
    log = env.get("/api/v1/audit", env.admin).json()
    assert [e["action"] for e in log["entries"]] == [
        "agent.revoke",
        "enroll_secret.revoke",
        "enroll_secret.create",
    ]
    assert all(e["actor"] == "ivan" for e in log["entries"])
    assert log["chain"]["ok"] is True


# --- policy upload ----------------------------------------------------------------------------


def test_policy_upload_then_agents_fetch_with_etag(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.admin}"}
    resp = env.client.put("/api/v1/policy", json=_signed_pack(env.signer, 3), headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["serial"] == 3
    got = env.signed_get("/api/v1/policy")
    assert got.status_code == 200
    body = got.json()
    assert body["serial"] == 3
    assert base64.b64decode(body["policy"]).startswith(b"# Proscribe policy pack")
    etag = got.headers["etag"]
    assert etag == f'"{body["sha256"]}"'
    unchanged = env.signed_get("/api/v1/policy", {"If-None-Match": etag})
    assert unchanged.status_code == 304


def test_policy_upload_serial_not_higher_is_409(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.admin}"}
    assert (
        env.client.put("/api/v1/policy", json=_signed_pack(env.signer, 5), headers=auth).status_code
        == 200
    )
    for serial in (5, 4):
        resp = env.client.put("/api/v1/policy", json=_signed_pack(env.signer, serial), headers=auth)
        assert resp.status_code == 409
        assert resp.json()["error"] == "serial_not_higher"


def test_policy_signed_by_untrusted_key_is_422(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.admin}"}
    rogue = Ed25519PrivateKey.generate()
    resp = env.client.put("/api/v1/policy", json=_signed_pack(rogue, 9), headers=auth)
    assert resp.status_code == 422
    assert resp.json()["error"] == "policy_rejected"


def test_policy_with_flipped_byte_is_422(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.admin}"}
    upload = _signed_pack(env.signer, 9)
    data = bytearray(base64.b64decode(upload["policy"]))
    data[200] ^= 0x01
    upload["policy"] = base64.b64encode(bytes(data)).decode()
    resp = env.client.put("/api/v1/policy", json=upload, headers=auth)
    assert resp.status_code == 422


def test_policy_upload_with_bad_base64_is_422(env: PeopleApiEnv) -> None:
    auth = {"Authorization": f"Bearer {env.admin}"}
    resp = env.client.put("/api/v1/policy", json={"policy": "***", "signature": "x"}, headers=auth)
    assert resp.status_code == 422


# --- violations --------------------------------------------------------------------------------


def _evs(n: int, base: float, **over: Any) -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    out = []
    for i in range(n):
        ev = new_event(
            over.get("kind", "dns"),
            rule=over.get("rule", "deepseek-web"),
            action=over.get("action", "sinkholed"),
            severity=over.get("severity", "high"),
            dns={"qname": "chat.deepseek.com"},
            process=over.get("process"),
            now=datetime.fromtimestamp(base - i, UTC),
        )
        out.append(ev)
    return out


def test_violations_filter_and_paginate_without_gaps(env: PeopleApiEnv) -> None:
    now = env.clock.now
    env.ingest(_evs(45, now))
    env.ingest(_evs(5, now, rule="other-rule", action="reported"))
    env.ingest(_evs(3, now, kind="health", rule=None, action="reported"))
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"rule": "deepseek-web", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = env.get("/api/v1/violations", env.viewer, **params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 45 == len(set(seen))
    everything = env.get("/api/v1/violations", env.viewer, limit=1000).json()["items"]
    assert len(everything) == 50  # health events are not violations
    times = [i["time"] for i in everything]
    assert times == sorted(times, reverse=True)
    reported = env.get("/api/v1/violations", env.viewer, action="reported").json()["items"]
    assert {i["rule"] for i in reported} == {"other-rule"}
    recent = env.get("/api/v1/violations", env.viewer, since="10s", limit=1000).json()["items"]
    assert 0 < len(recent) < 50


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday-ish"},
        {"cursor": "!!!"},
        {"limit": 0},
        {"limit": 100000},
        {"kind": "keylogger"},
        {"host": "a\x00b"},
        {"format": "xml"},
    ],
)
def test_bad_violation_queries_are_422(env: PeopleApiEnv, params: dict[str, Any]) -> None:
    resp = env.get("/api/v1/violations", env.viewer, **params)
    assert resp.status_code == 422
    assert "error" in resp.json()


def test_csv_cells_are_formula_safe(env: PeopleApiEnv) -> None:
    evs = _evs(5, env.clock.now, process={"pid": 1, "name": "x", "user": "u"})
    for ev, name in zip(evs, ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tTAB"], strict=True):
        ev["process"] = {**ev["process"], "name": name}
    env.ingest(evs)
    resp = env.get("/api/v1/violations", env.viewer, format="csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    names = {r["process"] for r in rows}
    # the tab itself is shown as a visible escape, as in every export
    assert names == {"'=cmd|' /C calc'!A0", "'+1", "'-2", "'@SUM(A1)", "'\\x09TAB"}


# --- hosts --------------------------------------------------------------------------------------


def test_hosts_coverage_marks_stale_and_regressed(env: PeopleApiEnv) -> None:
    def beat(serial: int) -> None:
        body = json.dumps(
            {
                "hostname": "ws-17",
                "os": "linux",
                "agent_version": "1",
                "policy": {"serial": serial},
                "spool": {"dropped": 3},
            }
        ).encode()
        sig = sign_request(
            env.agent_key, env.agent_id, "POST", "/api/v1/heartbeat", body, now=env.clock.now
        )
        sig["Content-Type"] = "application/json"
        assert env.client.post("/api/v1/heartbeat", content=body, headers=sig).status_code == 200

    beat(4)
    beat(3)
    (host,) = env.get("/api/v1/hosts", env.viewer).json()["hosts"]
    assert host["stale"] is False
    assert host["serial_regressed"] is True
    assert host["dropped"] == 3
    env.clock.now += 121
    data = env.get("/api/v1/hosts", env.viewer).json()
    assert data["stale"] == 1
    assert data["hosts"][0]["stale"] is True


# --- audit chain ---------------------------------------------------------------------------------


def _chain(env: PeopleApiEnv, n: int) -> None:
    with env.state.db.write() as conn:
        for i in range(n):
            audit.append_audit(
                conn, actor="ivan", action="test", target=f"t{i}", detail={"i": i}, now_us=i
            )


def test_audit_chain_verifies(env: PeopleApiEnv) -> None:
    _chain(env, 5)
    with env.state.db.read() as conn:
        verdict = audit.verify_chain(conn)
    assert verdict.ok
    assert verdict.rows == 5


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE audit_log SET target = 't9' WHERE seq = 3",
        "UPDATE audit_log SET detail = '{\"i\":7}' WHERE seq = 2",
        "UPDATE audit_log SET time_us = time_us + 1 WHERE seq = 4",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 1",
        # Reorder: swap the content of rows 2 and 3 (hashes travel with them).
        "UPDATE audit_log SET seq = CASE seq WHEN 2 THEN 3 WHEN 3 THEN 2 END + 100 "
        "WHERE seq IN (2, 3); UPDATE audit_log SET seq = seq - 100 WHERE seq > 100",
    ],
)
def test_audit_chain_detects_tampering(env: PeopleApiEnv, tamper: str) -> None:
    _chain(env, 5)
    with env.state.db.write() as conn:
        for statement in tamper.split("; "):
            conn.exec_driver_sql(statement)
    with env.state.db.read() as conn:
        verdict = audit.verify_chain(conn)
    assert not verdict.ok
    assert verdict.broken_at is not None


def test_audit_chain_detects_flipped_byte_in_hash(env: PeopleApiEnv) -> None:
    _chain(env, 3)
    with env.state.db.write() as conn:
        (h,) = conn.exec_driver_sql("SELECT hash FROM audit_log WHERE seq = 2").one()
        flipped = ("1" if h[0] != "1" else "2") + h[1:]
        conn.exec_driver_sql(f"UPDATE audit_log SET hash = '{flipped}' WHERE seq = 2")
    with env.state.db.read() as conn:
        assert not audit.verify_chain(conn).ok


# --- ops ----------------------------------------------------------------------------------------


def test_healthz_metrics_openapi(env: PeopleApiEnv) -> None:
    assert env.client.get("/healthz").json()["status"] == "ok"
    # /metrics answers loopback clients only by default (TestClient's address is "testclient")
    assert env.client.get("/metrics").status_code == 403
    local = TestClient(env.client.app, client=("127.0.0.1", 40000))  # the app already runs
    text = local.get("/metrics").text
    assert "# TYPE proscribe_events_total counter" in text
    assert "proscribe_agents 1" in text
    spec = env.client.get("/openapi.json").json()
    assert "/api/v1/events" in spec["paths"]


def test_unknown_route_and_method_are_json(env: PeopleApiEnv) -> None:
    resp = env.client.get("/nope")
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found"
    resp = env.client.delete("/api/v1/events")
    assert resp.status_code == 405
    assert resp.json()["error"] == "method_not_allowed"


def test_a_true_bug_is_a_generic_500_json_without_traceback(tmp_path: Path) -> None:
    app = create_app(settings_from_mapping({"database": {"url": f"sqlite:///{tmp_path / 'b.db'}"}}))

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/api/v1/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/api/v1/boom")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal_error", "detail": "see the collector's log"}
    assert "secret internals" not in resp.text
    assert "Traceback" not in resp.text


# --- policy export for central resolvers ------------------------------------------------------


def test_policy_export_serves_the_policy_in_force(env: PeopleApiEnv) -> None:
    assert env.get("/api/v1/policy/export", None, format="rpz").status_code == 401
    none_yet = env.get("/api/v1/policy/export", env.viewer, format="rpz")
    assert none_yet.status_code == 404 and none_yet.json()["error"] == "no_policy"
    auth = {"Authorization": f"Bearer {env.admin}"}
    assert env.client.put(
        "/api/v1/policy", json=_signed_pack(env.signer, 4), headers=auth
    ).is_success
    rpz = env.get("/api/v1/policy/export", env.viewer, format="rpz")
    assert rpz.status_code == 200 and rpz.headers["content-type"].startswith("text/plain")
    assert "*.deepseek.com CNAME ." in rpz.text and "serial 4" in rpz.text
    assert rpz.headers["X-Policy-Serial"] == "4"
    hosts = env.get("/api/v1/policy/export", env.viewer, format="hosts")
    assert "0.0.0.0 deepseek.com" in hosts.text
    bad = env.get("/api/v1/policy/export", env.viewer, format="bind")
    assert bad.status_code == 422
    # a newer policy is served as soon as it is in force
    assert env.client.put(
        "/api/v1/policy", json=_signed_pack(env.signer, 5), headers=auth
    ).is_success
    assert "serial 5" in env.get("/api/v1/policy/export", env.admin, format="adblock").text
