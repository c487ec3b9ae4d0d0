"""Two real collector replicas on one PostgreSQL, agents posting to both at once: after every
batch, both overviews show exactly what a ``count(*)`` over the events says (the counts are
kept in the events' transaction, not in each replica's memory), duplicates counted once.
Migration 0007 fills the counts from events stored before it."""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from alembic import command
from sqlalchemy import func, insert, select

from proscribe.collector.storage import counts
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.collector.storage.database import open_database
from proscribe.collector.storage.migrate import _config
from proscribe.collector.storage.tables import events, violation_blocks, violation_counts
from tests.support.devserver import CollectorProcess
from tests.support.postgres import throwaway_database
from tests.support.sample import create_user, event_row, make_event, prepare_database
from tests.support.simulate import SimulatedAgent

pytestmark = pytest.mark.postgres

AGENTS = 6
BATCHES = 4
PER_POST = 20
DAY_US = counts.DAY_US


def _sign_in(base: str, user: str, password: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only
    login = session.get(f"{base}/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    assert csrf is not None
    reply = session.post(
        f"{base}/login",
        data={"username": user, "password": password, "csrf": csrf.group(1), "next": "/"},
        timeout=30,
        allow_redirects=False,
    )
    assert reply.status_code == 303, reply.text
    return session


def _overview(session: requests.Session, base: str) -> tuple[int, int]:
    page = session.get(f"{base}/?period=90d", timeout=30).text
    total = re.search(r"([\d,]+) in total", page)
    blocked = re.search(r"blocked ([\d,]+)</span>", page)
    assert total is not None and blocked is not None, page[:2000]
    return int(total.group(1).replace(",", "")), int(blocked.group(1).replace(",", ""))


def _truth(url: str) -> tuple[int, int, dict[tuple[object, ...], int], int]:
    """(violations in the 90-day overview, blocked among them, the counts table, its rows
    recomputed from the events) straight from the database; its blocks checked on the way."""
    db = open_database(url)
    today = int(time.time() * 1e6) // DAY_US
    since = (today - 89) * DAY_US
    try:
        with db.read() as conn:
            in_period = (events.c.kind.in_(counts.VIOLATION_KINDS), events.c.time_us >= since)
            total = conn.execute(select(func.count()).where(*in_period)).scalar_one()
            blocked = conn.execute(
                select(func.count()).where(
                    *in_period,
                    events.c.action.in_(["killed", "denied", "sinkholed", "quarantined"]),
                )
            ).scalar_one()
            vc = violation_counts
            table = {
                tuple(r[:-1]): int(r[-1])
                for r in conn.execute(
                    select(vc.c.day, vc.c.kind, vc.c.action, vc.c.severity, vc.c.rule).add_columns(
                        vc.c.hostname, vc.c.username, vc.c.n
                    )
                )
            }
            recomputed = counts.tally(dict(r) for r in conn.execute(select(events)).mappings())
            # The blocks the report reads (0009) are the same violations summed by 8 days.
            blocks = {tuple(r[:-1]): int(r[-1]) for r in conn.execute(select(violation_blocks))}
            assert blocks == dict(counts.blocks_of(recomputed))
            return int(total), int(blocked), table, sum(recomputed.values())
    finally:
        db.dispose()


def test_two_replicas_overviews_equal_the_truth_after_every_batch(tmp_path: Path) -> None:
    rng = random.Random(16)
    with throwaway_database("proscribe_counts") as url:
        # Events stored before migration 0007 are counted by its backfill.
        db = open_database(url)
        cfg = _config()
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
            conn.commit()
        now = time.time()
        old = [
            event_row(
                make_event(rng, now - i * 3600, "a" * 32, f"old-{i % 3}"),
                int((now - i * 3600) * 1e6),
            )
            for i in range(30)
        ]
        with db.write() as conn:
            conn.execute(insert(events), old)
        db.dispose()
        db = prepare_database(url)  # 0006 -> head, as a replica's start does
        password = create_user(db, "ann", "viewer")
        with db.write() as conn:
            _sid, secret = create_enroll_secret(conn, "counts", 0)
        db.dispose()
        total, _blocked, table, recomputed = _truth(url)
        assert total == 30 and sum(table.values()) == recomputed == 30

        replicas = [CollectorProcess(tmp_path / f"r{i}", url) for i in range(2)]
        for replica in replicas:
            replica.start()
        agents: list[SimulatedAgent] = []
        try:
            sessions = [_sign_in(r.url, "ann", password) for r in replicas]
            for i in range(AGENTS):
                agent = SimulatedAgent(replicas[i % 2].url)
                assert agent.enroll(secret, hostname=f"ws-{i}").status == 200
                agents.append(agent)
            sent: list[list[dict[str, object]]] = [[] for _ in agents]
            for batch in range(BATCHES):
                errors: list[str] = []

                def post(i: int, batch: int = batch, errors: list[str] = errors) -> None:
                    agent = agents[i]
                    local = random.Random(f"{batch}-{i}")
                    assert agent.agent_id is not None
                    items = []
                    for _ in range(PER_POST):
                        body = make_event(
                            local,
                            time.time() - local.random() * 3 * 86400,
                            agent.agent_id,
                            f"ws-{i}",
                        )
                        body["id"] = str(uuid.uuid4())
                        items.append(body)
                    # A resend of the previous batch (a lost acknowledgement) rides along.
                    for chunk in (items[:10], sent[i][-5:] + items[10:]):
                        reply = agent.post_events(chunk)
                        if reply.status != 200:
                            errors.append(f"{i}: HTTP {reply.status} {reply.body[:200]!r}")
                    sent[i] = items

                threads = [threading.Thread(target=post, args=(i,)) for i in range(AGENTS)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert errors == []
                total, blocked, table, recomputed = _truth(url)
                assert total == 30 + (batch + 1) * AGENTS * PER_POST  # duplicates not stored
                assert sum(table.values()) == recomputed == total
                for replica, session in zip(replicas, sessions, strict=True):
                    assert _overview(session, replica.url) == (total, blocked), batch
        finally:
            for agent in agents:
                agent.close()
            for replica in replicas:
                replica.stop()
