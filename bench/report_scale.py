"""The 90-day compliance report at fleet size, in-process, on PostgreSQL: a database built as
``bench/fleet.py`` builds it (agents enrolled and first heartbeats by the collector's own
storage calls, events bulk-loaded over 90 days by ``bench.fleet.bulk_load``), then
``build_report`` and its HTML timed ``--repeats`` times back to back, with the CPU this process
and PostgreSQL spent. No HTTP, no haproxy: the part of ``GET /report`` that is ours.

    .venv/bin/python -m bench.report_scale --agents 20000 --events 2000000 --keep-db
    .venv/bin/python -m bench.report_scale --reuse          # the database kept before

The database (``--database``) is dropped at the end unless ``--keep-db``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.fleet import PostgresMeter, _admin, _url, bulk_load, enroll_in_database
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.collector.storage.counts import DAY_US

DB_NAME = "proscribe_report_scale"


def build(url: str, agents: int, events: int, procs: int) -> None:
    db = open_database(url)
    upgrade(db)
    with db.write() as conn:
        create_enroll_secret(conn, "report-scale", 0)
    db.dispose()
    started = time.perf_counter()
    creds, _took = enroll_in_database(url, 0, agents, procs)
    print(f"enrolled {len(creds):,} agents in {time.perf_counter() - started:.0f} s", flush=True)
    loaded, took = bulk_load(url, creds, events)
    print(f"bulk-loaded {loaded:,} events in {took:.0f} s", flush=True)


def measure(url: str, database: str, repeats: int, fmt: str) -> None:
    from proscribe.collector.web.report import build_report, report_html, report_text

    db = open_database(url)
    pg = PostgresMeter(database)
    builds: list[float] = []
    renders: list[float] = []
    cpus: list[float] = []
    pg_cpus: list[float] = []
    size = 0
    try:
        for _ in range(repeats):
            now_us = int(time.time() * 1e6)
            cpu0, pg0 = time.process_time(), pg()
            t0 = time.perf_counter()
            with db.read() as conn:
                if fmt == "html":
                    report = build_report(
                        conn,
                        since_us=now_us - 90 * DAY_US,
                        until_us=now_us,
                        now_us=now_us,
                        heartbeat_window_s=180,
                        db=db,  # as the dashboard builds it: the events on a second connection
                    )
                    t1 = time.perf_counter()
                    out = report_html(report, standalone=False)
                else:
                    t1 = time.perf_counter()
                    out = report_text(
                        conn,
                        fmt=fmt,
                        since_us=now_us - 90 * DAY_US,
                        until_us=now_us,
                        now_us=now_us,
                        heartbeat_window_s=180,
                        db=db,
                    )
            t2 = time.perf_counter()
            builds.append(t1 - t0)
            renders.append(t2 - t1)
            cpus.append(time.process_time() - cpu0)
            pg_cpus.append(pg() - pg0)
            size = len(out)
    finally:
        pg.close()
        db.dispose()
    total = [b + r for b, r in zip(builds, renders, strict=True)]
    print(
        f"90-day report ({fmt}), {repeats} runs: median {statistics.median(total):.2f} s "
        f"(min {min(total):.2f}, max {max(total):.2f}); build median "
        f"{statistics.median(builds):.2f} s, render {statistics.median(renders):.2f} s; "
        f"CPU per report: this process {statistics.median(cpus):.2f} s, PostgreSQL "
        f"{statistics.median(pg_cpus):.2f} s; {size / 1e6:.2f} MB; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--format", choices=("html", "csv", "json"), default="html")
    parser.add_argument("--database", default=DB_NAME)
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument("--reuse", action="store_true", help="measure the kept database")
    args = parser.parse_args(argv)
    url = _url(args.database)
    if not args.reuse:
        _admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        _admin(f'CREATE DATABASE "{args.database}"')
    try:
        if not args.reuse:
            build(url, args.agents, args.events, args.procs)
        measure(url, args.database, args.repeats, args.format)
    finally:
        if not args.keep_db:
            _admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
