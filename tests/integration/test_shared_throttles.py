"""Enrollment and sign-in throttles are shared by replicas: two collector apps on one database
(PostgreSQL, as replicas run; SQLite too) allow together what one allows alone, however the
attempts are spread between them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.core.policy.keys import public_key_string
from tests.support.clock import ManualClock
from tests.support.dashboard_env import CSRF
from tests.support.postgres import throwaway_database
from tests.support.sample import create_user, prepare_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'collector.db'}"
    else:
        with throwaway_database("proscribe_thr") as url:
            yield url


def _replicas(url: str, clock: ManualClock) -> Iterator[list[TestClient]]:
    settings = settings_from_mapping(
        {"database": {"url": url}, "enroll": {"per_ip_burst": 5, "per_ip_rate": 0.01}}
    )
    apps = [create_app(settings, clock=clock) for _ in range(2)]
    with (
        TestClient(apps[0], base_url="http://127.0.0.1") as a,
        TestClient(apps[1], base_url="http://127.0.0.1") as b,
    ):
        yield [a, b]


def _enroll(client: TestClient, secret: str) -> int:
    body: dict[str, Any] = {
        "secret": secret,
        "hostname": "ws",
        "os": "linux",
        "agent_version": "0.1.0",
        "public_key": public_key_string(Ed25519PrivateKey.generate().public_key()),
    }
    return client.post("/api/v1/enroll", json=body).status_code


def test_enrollment_burst_is_shared(database_url: str) -> None:
    db = prepare_database(database_url)
    with db.write() as conn:
        _sid, secret = create_enroll_secret(conn, "t", 0)
    db.dispose()
    clock = ManualClock()
    gen = _replicas(database_url, clock)
    replicas = next(gen)
    try:
        statuses = [_enroll(c, secret) for c in itertools.islice(itertools.cycle(replicas), 8)]
        # per address: a burst of 5 in all, not 5 per replica (each replica alone allows 5)
        assert statuses == [200] * 5 + [429] * 3
        clock.advance(100)  # 0.01 tokens/s: one more
        assert _enroll(replicas[1], secret) == 200
        assert _enroll(replicas[0], secret) == 429
    finally:
        gen.close()


def _login(client: TestClient, name: str, password: str) -> int:
    match = CSRF.search(client.get("/login").text)
    assert match is not None
    reply = client.post(
        "/login",
        data={"username": name, "password": password, "csrf": match.group(1)},
        follow_redirects=False,
    )
    return reply.status_code


def test_failed_sign_ins_are_counted_across_replicas(database_url: str) -> None:
    db = prepare_database(database_url)
    password = create_user(db, "adam", "admin")
    db.dispose()
    clock = ManualClock()
    gen = _replicas(database_url, clock)
    replicas = next(gen)
    try:
        wrong = [
            _login(c, "adam", "guess") for c in itertools.islice(itertools.cycle(replicas), 10)
        ]
        assert wrong == [401] * 10
        # 10 failures spread over two replicas exhaust the one shared burst: both refuse now,
        # the right password included (in memory each replica would still allow 5 more)
        assert _login(replicas[0], "adam", "guess") == 429
        assert _login(replicas[1], "adam", password) == 429
        clock.advance(60)  # one token per minute for the name, two for the address
        assert _login(replicas[1], "adam", password) == 303
    finally:
        gen.close()
