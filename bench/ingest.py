"""Ingest throughput: events/s through HTTP (signed batches of 100 from N concurrent simulated
agents, against the real ``proscribe collector serve``) beside the raw insert rate of the same
database in the same run (``insert_events`` straight into a fresh migrated database, same
batch size: the limit). Prints both and the ratio, for SQLite and PostgreSQL.

    .venv/bin/python -m bench.ingest [--agents 8] [--batches 400] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from proscribe.collector.ingest import judge_events
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.collector.storage.events import insert_events
from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.postgres import throwaway_database
from tests.support.simulate import SimulatedAgent

BATCH = 100


def make_batches(n: int) -> list[list[dict[str, Any]]]:
    out = []
    for b in range(n):
        out.append(
            [
                new_event(
                    "process" if i % 2 else "dns",
                    rule=f"rule-{i % 20}",
                    action="killed" if i % 2 else "sinkholed",
                    process={
                        "pid": 1000 + i,
                        "name": "dsh",
                        "exe": "/opt/ds/dsh",
                        "cmdline": ["dsh", "--model", "deepseek-r1"],
                        "user": f"u{b % 50}",
                    }
                    if i % 2
                    else None,
                    dns={"qname": "chat.deepseek.com", "qtype": "A"} if not i % 2 else None,
                    host={"hostname": f"ws-{b % 200}", "os": "linux"},
                )
                for i in range(BATCH)
            ]
        )
    return out


def raw_insert_rate(url: str, batches: list[list[dict[str, Any]]]) -> float:
    db = open_database(url)
    upgrade(db)
    now_us = int(time.time() * 1_000_000)  # events later than now + 300 s are refused
    rows = [judge_events(b, agent_id="raw", hostname="raw", now_us=now_us)[1] for b in batches]
    start = time.perf_counter()
    for chunk in rows:
        with db.write() as conn:
            insert_events(conn, chunk)
    elapsed = time.perf_counter() - start
    db.dispose()
    return len(batches) * BATCH / elapsed


def http_rate(
    url: str, workdir: Path, agents: int, batches: list[list[dict[str, Any]]]
) -> dict[str, float]:
    db = open_database(url)
    upgrade(db)
    with db.write() as conn:
        secret = create_enroll_secret(conn, "bench", 0)[1]
    db.dispose()
    bodies = [json.dumps({"events": b}).encode() for b in batches]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    with CollectorProcess(workdir, url, extra_toml="[enroll]\nper_ip_burst = 1000\n") as server:
        sims = []
        for _ in range(agents):
            sim = SimulatedAgent(server.url)
            assert sim.enroll(secret).status == 200
            sims.append(sim)
        # Warm up: one batch per agent (not counted).
        for sim in sims:
            sim.post_events(make_batches(1)[0])

        def run(sim: SimulatedAgent, mine: list[bytes]) -> None:
            for body in mine:
                t0 = time.perf_counter()
                reply = sim.signed("POST", "/api/v1/events", body)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if reply.status != 200:
                        errors.append(f"{reply.status} {reply.body[:100]!r}")
            sim.close()

        threads = [
            threading.Thread(target=run, args=(sims[k], bodies[k::agents])) for k in range(agents)
        ]
        cpu0 = server.cpu_seconds()
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        cpu = server.cpu_seconds() - cpu0
    if errors:
        raise SystemExit(f"{len(errors)} failed batches, e.g. {errors[0]}")
    latencies.sort()
    return {
        "rate": len(bodies) * BATCH / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us_per_event": cpu / (len(bodies) * BATCH) * 1e6,
    }


def report(label: str, raw: float, http: dict[str, float]) -> None:
    print(
        f"{label:10} HTTP {http['rate']:9.0f} events/s  (batch p50 {http['p50_ms']:.1f} ms, "
        f"p99 {http['p99_ms']:.1f} ms)   raw insert {raw:9.0f} events/s   "
        f"ratio HTTP/raw {http['rate'] / raw:.2f}\n"
        f"{'':10} server CPU {http['cpu_us_per_event']:.0f} us/event "
        f"(= {1e6 / http['cpu_us_per_event']:.0f} events/s per free core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    batches = make_batches(args.batches)
    print(f"{args.batches} batches x {BATCH} events, {args.agents} concurrent agents")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        raw = raw_insert_rate(f"sqlite:///{base / 'raw.db'}", batches)
        http = http_rate(f"sqlite:///{base / 'http.db'}", base / "srv", args.agents, batches)
        report("SQLite", raw, http)
        if not args.no_postgres:
            with (
                throwaway_database("proscribe_bench") as raw_url,
                throwaway_database("proscribe_bench") as http_url,
            ):
                raw = raw_insert_rate(raw_url, batches)
                http = http_rate(http_url, base / "srv-pg", args.agents, batches)
                report("PostgreSQL", raw, http)


if __name__ == "__main__":
    main()
