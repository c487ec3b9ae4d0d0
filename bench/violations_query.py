"""Violations query latency over 1M stored events: filtered, paginated ``GET /api/v1/violations``
against the real ``proscribe collector serve`` (SQLite), p50/p95 per filter shape; beside the
same query straight through the storage layer (``queries.list_violations``) in the same run.

    .venv/bin/python -m bench.violations_query [--events 1000000] [--queries 40]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.schema import CreateIndex, DropIndex

from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.events import insert_events
from proscribe.collector.storage.queries import ViolationFilter, list_violations
from proscribe.collector.storage.tables import events
from proscribe.collector.storage.users import add_user
from tests.support.devserver import CollectorProcess
from tests.support.simulate import SimulatedAgent

HOSTS = 2000
USERS = 500
RULES = 40
KINDS = ("process", "dns", "file", "tamper", "health")
ACTIONS = ("reported", "would_block", "killed", "denied", "sinkholed")
SEVERITIES = ("low", "medium", "high", "critical")
DAY_US = 86_400 * 1_000_000


def fill(url: str, n: int, now_us: int) -> None:
    db = open_database(url)
    upgrade(db)
    with db.write() as conn:
        for index in events.indexes:
            conn.execute(DropIndex(index))
    rng = random.Random(7)
    span = 90 * DAY_US
    chunk = 20_000
    for start in range(0, n, chunk):
        rows = []
        for _ in range(min(chunk, n - start)):
            kind = rng.choice(KINDS)
            host = f"ws-{rng.randrange(HOSTS):05d}"
            user = f"user{rng.randrange(USERS)}"
            rule = f"rule-{rng.randrange(RULES)}"
            action = rng.choice(ACTIONS)
            severity = rng.choice(SEVERITIES)
            t = now_us - rng.randrange(span)
            eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            body = {
                "id": eid,
                "time": "2026-01-01T00:00:00.000Z",
                "kind": kind,
                "rule": rule,
                "action": action,
                "severity": severity,
                "host": {"agent_id": "a" * 32, "hostname": host, "os": "linux"},
                "process": {"pid": 4242, "name": "dsh", "user": user, "cmdline": ["dsh", "-m"]},
            }
            rows.append(
                {
                    "event_id": eid,
                    "agent_id": "a" * 32,
                    "time_us": t,
                    "received_us": t,
                    "hostname": host,
                    "username": user,
                    "rule": rule,
                    "kind": kind,
                    "action": action,
                    "severity": severity,
                    "body": json.dumps(body, separators=(",", ":")),
                }
            )
        with db.write(durable=False) as conn:
            insert_events(conn, rows)
    with db.write() as conn:
        for index in events.indexes:  # rebuilt once, sorted, instead of 1M random inserts
            conn.execute(CreateIndex(index, if_not_exists=True))
        conn.exec_driver_sql("ANALYZE")
    db.dispose()


def shapes(rng: random.Random) -> dict[str, dict[str, Any]]:
    return {
        "newest page (no filter)": {},
        "host": {"host": f"ws-{rng.randrange(HOSTS):05d}"},
        "user": {"user": f"user{rng.randrange(USERS)}"},
        "rule + since 7d": {"rule": f"rule-{rng.randrange(RULES)}", "since": "7d"},
        "kind + action": {"kind": "process", "action": "killed"},
        "severity critical, since 1d": {"severity": "critical", "since": "1d"},
        "host + rule + 30d": {
            "host": f"ws-{rng.randrange(HOSTS):05d}",
            "rule": f"rule-{rng.randrange(RULES)}",
            "since": "30d",
        },
        "old window (60d..30d)": {"since": "60d", "until": "30d"},
    }


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'q.db'}"
        now = time.time()
        t0 = time.perf_counter()
        fill(url, args.events, int(now * 1e6))
        print(f"stored {args.events} events in {time.perf_counter() - t0:.0f} s")
        db = open_database(url)
        with db.write() as conn:
            token = add_user(conn, "bench", "viewer", 0)[1]
        with CollectorProcess(Path(tmp) / "srv", url) as server:
            client = SimulatedAgent(server.url)
            rng = random.Random(11)
            print(f"{'filter':30} {'HTTP p50':>9} {'HTTP p95':>9} {'storage p95':>12} {'rows':>5}")
            worst = 0.0
            for name in shapes(rng):
                http_ms: list[float] = []
                store_ms: list[float] = []
                rows = 0
                for _ in range(args.queries):
                    params = {**shapes(rng)[name], "limit": 100}
                    target = "/api/v1/violations?" + urllib.parse.urlencode(params)
                    t = time.perf_counter()
                    reply = client.request(
                        "GET", target, headers={"Authorization": f"Bearer {token}"}
                    )
                    http_ms.append((time.perf_counter() - t) * 1000)
                    assert reply.status == 200, reply.body[:200]
                    rows = len(reply.json()["items"])
                    flt = ViolationFilter(
                        since_us=int(
                            (
                                now
                                - {"7d": 7, "1d": 1, "30d": 30, "60d": 60}[params["since"]] * 86400
                            )
                            * 1e6
                        )
                        if "since" in params
                        else None,
                        until_us=int((now - 30 * 86400) * 1e6) if "until" in params else None,
                        host=params.get("host"),
                        user=params.get("user"),
                        rule=params.get("rule"),
                        kind=params.get("kind"),
                        action=params.get("action"),
                        severity=params.get("severity"),
                    )
                    t = time.perf_counter()
                    with db.read() as conn:
                        list_violations(conn, flt, limit=100)
                    store_ms.append((time.perf_counter() - t) * 1000)
                worst = max(worst, pct(http_ms, 0.95))
                print(
                    f"{name:30} {statistics.median(http_ms):8.1f}ms {pct(http_ms, 0.95):8.1f}ms "
                    f"{pct(store_ms, 0.95):11.1f}ms {rows:5d}"
                )
            client.close()
            print(f"worst HTTP p95: {worst:.1f} ms (target < 200 ms)")
        db.dispose()
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
