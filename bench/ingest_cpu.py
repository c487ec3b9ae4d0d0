"""CPU per event of ingest, on PostgreSQL: what the collector and the database spend, not how
fast a shared machine happens to go (the figure that extrapolates, docs/scale.md).

1. The Python stages of a stored batch that need no database, in this process: parsing the
   body (``parse_batch``), judging the events (``judge_events``) and encoding the batch
   document ``insert_events`` sends; the median CPU time of ``--repeats`` passes over
   ``--stage-batches`` batches of 100.
2. Over HTTP: one real ``proscribe collector serve`` on a throwaway PostgreSQL database, 8
   keep-alive agents posting signed batches of 100 (bench/ingest.py's events); the server's
   CPU and that of the database's backends from ``/proc``, per event, for each of
   ``--repeats`` fresh servers, and their medians.

    .venv/bin/python -m bench.ingest_cpu [--batches 400] [--repeats 3]

To compare two versions, run it on each, back to back, more than once: other work on the
machine moves every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import timeit
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from bench.ingest import BATCH, make_batches
from proscribe.collector.ingest import judge_events, parse_batch
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.agents import create_enroll_secret
from tests.support.devserver import CollectorProcess
from tests.support.postgres import throwaway_database
from tests.support.simulate import SimulatedAgent

AGENTS = 8


def stage_costs(batches: list[list[dict[str, Any]]], repeats: int) -> dict[str, float]:
    """Median CPU µs per event of each stage."""
    bodies = [json.dumps({"events": b}).encode() for b in batches]
    now_us = int(time.time() * 1_000_000)
    judged = [judge_events(b, agent_id="a", hostname="h", now_us=now_us)[1] for b in batches]
    stages = {
        "parse_batch": lambda: [parse_batch(body) for body in bodies],
        "judge_events": lambda: [
            judge_events(b, agent_id="a", hostname="h", now_us=now_us) for b in batches
        ],
        "batch document": lambda: [to_json(rows).decode() for rows in judged],
    }
    events = len(batches) * BATCH
    return {
        name: statistics.median(
            timeit.Timer(run, timer=time.process_time).repeat(number=1, repeat=repeats)
        )
        / events
        * 1e6
        for name, run in stages.items()
    }


def _backend_cpu(database: str) -> float:
    """CPU seconds of the PostgreSQL backends connected to ``database`` (by process title)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if database.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def http_costs(batches: list[list[dict[str, Any]]]) -> tuple[float, float]:
    """(server CPU µs per event, PostgreSQL backends' CPU µs per event) for one fresh server."""
    bodies = [json.dumps({"events": b}).encode() for b in batches]
    with tempfile.TemporaryDirectory() as tmp, throwaway_database("proscribe_ingest_cpu") as url:
        db = open_database(url)
        upgrade(db)
        with db.write() as conn:
            secret = create_enroll_secret(conn, "bench", 0)[1]
        db.dispose()
        database = url.rsplit("/", 1)[1]
        toml = "[enroll]\nper_ip_burst = 1000\n"
        with CollectorProcess(Path(tmp), url, extra_toml=toml) as server:
            sims = [SimulatedAgent(server.url) for _ in range(AGENTS)]
            for sim in sims:
                assert sim.enroll(secret).status == 200
                sim.post_events(make_batches(1)[0])  # warm up, not counted
            errors: list[int] = []

            def run(sim: SimulatedAgent, mine: list[bytes]) -> None:
                for body in mine:
                    reply = sim.signed("POST", "/api/v1/events", body)
                    if reply.status != 200:
                        errors.append(reply.status)
                sim.close()

            threads = [
                threading.Thread(target=run, args=(sims[k], bodies[k::AGENTS]))
                for k in range(AGENTS)
            ]
            server0, pg0 = server.cpu_seconds(), _backend_cpu(database)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            server_cpu = server.cpu_seconds() - server0
            pg_cpu = _backend_cpu(database) - pg0
    if errors:
        raise SystemExit(f"{len(errors)} failed batches, e.g. HTTP {errors[0]}")
    events = len(bodies) * BATCH
    return server_cpu / events * 1e6, pg_cpu / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=400, help="HTTP batches of 100 (400)")
    parser.add_argument("--stage-batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    stages = stage_costs(make_batches(args.stage_batches), max(5, args.repeats * 7))
    print(
        "in-process stages, CPU per event: "
        + ", ".join(f"{k} {v:.1f} µs" for k, v in stages.items())
    )
    servers, pgs = [], []
    for run in range(args.repeats):
        server, pg = http_costs(make_batches(args.batches))
        servers.append(server)
        pgs.append(pg)
        print(
            f"HTTP run {run + 1}: collector {server:.1f} µs/event, PostgreSQL {pg:.1f} µs/event "
            f"(load average {os.getloadavg()[0]:.1f})"
        )
    print(
        f"median of {args.repeats}: collector {statistics.median(servers):.1f} µs/event, "
        f"PostgreSQL {statistics.median(pgs):.1f} µs/event"
    )


if __name__ == "__main__":
    main()
