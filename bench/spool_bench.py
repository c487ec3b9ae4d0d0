"""Spool figures: durable append latency, fill to the cap with eviction, pending+ack drain.

Peer measured in the same run: the same insert into a bare SQLite table with
``synchronous=NORMAL`` (what many agents use; it may lose the last commits on power loss), so
the price of ``FULL`` is visible as a ratio.

    .venv/bin/python -m bench.spool_bench [--appends 2000] [--fill 100000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from proscribe.agent.spool import Spool
from proscribe.core.events import new_event


def _event(i: int) -> dict[str, object]:
    return new_event(
        "process",
        rule=f"rule-{i % 20}",
        action="killed",
        process={
            "pid": i,
            "ppid": 1,
            "name": "deepseek",
            "exe": f"/opt/deepseek/bin/deepseek-{i % 500}",
            "cmdline": ["deepseek", "--model", "r1", str(i)],
            "user": "alice",
            "sha256": "ab" * 32,
        },
        host={"agent_id": "a" * 36, "hostname": "ws-01", "os": "linux"},
        policy={"id": "us-navy-deepseek-2025", "serial": 7, "sha256": "cd" * 32},
        detail="x" * 120,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_append(root: Path, n: int) -> tuple[list[float], list[float]]:
    spool = Spool(root / "spool.db")
    ours = []
    for i in range(n):
        event = _event(i)
        t0 = time.perf_counter()
        spool.append(event)
        ours.append((time.perf_counter() - t0) * 1000)
    spool.close()

    conn = sqlite3.connect(root / "peer.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    peer = []
    for i in range(n):
        event = _event(i)
        t0 = time.perf_counter()
        conn.execute("INSERT INTO events VALUES (?, ?)", (event["id"], json.dumps(event)))
        peer.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return ours, peer


def bench_fill(root: Path, n: int) -> None:
    spool = Spool(root / "fill.db", max_events=n)
    t0 = time.perf_counter()
    bursts = []
    for start in range(0, n, 100):  # bursts of 100, one commit each (append_many)
        events = [_event(i) for i in range(start, min(n, start + 100))]
        t_burst = time.perf_counter()
        spool.append_many(events)
        bursts.append((time.perf_counter() - t_burst) * 1000)
    filled = time.perf_counter() - t0
    at_fill = spool.stats()
    over = []
    for i in range(n, n + 200):
        t1 = time.perf_counter()
        spool.append(_event(i))
        over.append((time.perf_counter() - t1) * 1000)
    stats = spool.stats()
    t2 = time.perf_counter()
    drained = 0
    while True:
        batch = spool.pending(500)
        if not batch:
            break
        spool.ack([b.id for b in batch])
        drained += len(batch)
    drain = time.perf_counter() - t2
    size = sum(p.stat().st_size for p in root.glob("fill.db*"))
    spool.close()
    print(
        f"fill {n} events in bursts of 100: {filled:.1f} s ({n / filled:.0f} events/s),"
        f" files {size / 2**20:.1f} MiB"
    )
    print(
        f"  bursts of 100: median {statistics.median(bursts):.1f} ms, p99 {_pct(bursts, 0.99):.1f}"
        f" ms, max {max(bursts):.0f} ms (includes the one fold pass when a cap was reached);"
        f" held {at_fill.depth} events / {at_fill.bytes / 2**20:.1f} MiB of JSON"
    )
    print(
        f"single append at the cap (eviction): median {statistics.median(over):.2f} ms,"
        f" p99 {_pct(over, 0.99):.2f} ms; dropped so far {stats.dropped}"
    )
    print(f"drain by pending(500)+ack: {drained} events in {drain:.1f} s ({drained / drain:.0f}/s)")


def bench_evict_oldest(root: Path, n: int) -> None:
    """A full spool of distinct violations: every append evicts the oldest non-first one."""
    spool = Spool(root / "evict.db", max_events=n)
    for start in range(0, n, 500):
        batch = [_event(i) for i in range(start, min(n, start + 500))]
        for e in batch:
            e["process"]["exe"] = f"/opt/x/{e['process']['pid']}"  # type: ignore[index]
        spool.append_many(batch)
    times = []
    for i in range(n, n + 300):
        e = _event(i)
        e["process"]["exe"] = f"/opt/x/{i}"  # type: ignore[index]
        t0 = time.perf_counter()
        spool.append(e)
        times.append((time.perf_counter() - t0) * 1000)
    print(
        f"append at a full spool of {n} distinct violations (evicts the oldest non-first):"
        f" median {statistics.median(times):.2f} ms, p99 {_pct(times, 0.99):.2f} ms;"
        f" dropped {spool.stats().dropped}"
    )
    spool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--fill", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours, peer = bench_append(root, args.appends)
        m_ours, m_peer = statistics.median(ours), statistics.median(peer)
        print(
            f"append (WAL, synchronous=FULL, committed): median {m_ours:.3f} ms,"
            f" p99 {_pct(ours, 0.99):.3f} ms over {len(ours)}"
        )
        print(
            f"peer bare insert (WAL, synchronous=NORMAL): median {m_peer:.3f} ms,"
            f" p99 {_pct(peer, 0.99):.3f} ms; ratio ours/peer {m_ours / m_peer:.1f}x"
        )
        bench_fill(root, args.fill)
        bench_evict_oldest(root, min(args.fill, 50_000))


if __name__ == "__main__":
    main()
