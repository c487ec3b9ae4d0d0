"""Violation → acknowledged by the real collector: how long a committed event waits.

Starts `proscribe collector serve` (SQLite) on a free loopback port in a temp dir, enrolls an
agent through the real reporter, then, one at a time, spools an event, calls ``notify()`` and
waits until the collector's acknowledgement marks it sent. Also measures a backlog drain
(events/s through the reporter in batches of up to 500).

    .venv/bin/python -m bench.reporter_latency [--events 200] [--backlog 5000]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proscribe.agent.reporter import ReporterConfig, reporter_for_url
from proscribe.agent.spool import Spool
from proscribe.core.events import new_event
from tests.support.ports import free_tcp_port

CLI = [sys.executable, "-m", "proscribe.cli"]


def _event(i: int) -> dict[str, object]:
    return new_event(
        "process",
        rule="deepseek-desktop",
        action="killed",
        process={"pid": 1000 + i, "name": "deepseek", "exe": f"/opt/deepseek/{i}", "user": "a"},
        host={"hostname": "bench", "os": "linux"},
        detail="bench",
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # retries while the collector starts are expected
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_tcp_port()
        config = root / "collector.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n'
            f'[database]\nurl = "sqlite:///{root / "collector.db"}"\n'
        )
        secret = subprocess.run(
            [*CLI, "collector", "enroll-secret", "create", "--config", str(config)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[0]
        (root / "enroll.secret").write_text(secret + "\n")
        server = subprocess.Popen(
            [*CLI, "collector", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spool = Spool(root / "agent" / "spool.db")
        reporter = reporter_for_url(
            spool,
            url=f"http://127.0.0.1:{port}",
            ca_file=None,
            enroll_secret_file=root / "enroll.secret",
            state_dir=root / "agent",
            config=ReporterConfig(idle_check=30, backoff_cap=0.5),
        )
        try:
            reporter.start()
            deadline = time.monotonic() + 30
            while not reporter.identity.enrolled:
                if time.monotonic() > deadline:
                    raise SystemExit("the collector did not come up")
                time.sleep(0.05)
            time.sleep(0.5)
            latencies = []
            for i in range(args.events):
                spool.append(_event(i))
                started = time.perf_counter()
                reporter.notify()
                target = i + 1
                while spool.stats().sent < target:
                    time.sleep(0.0005)
                latencies.append((time.perf_counter() - started) * 1000)
            print(
                f"notify -> acknowledged by the collector (SQLite): median "
                f"{statistics.median(latencies):.1f} ms, p99 {_pct(latencies, 0.99):.1f} ms,"
                f" max {max(latencies):.1f} ms over {len(latencies)} events (target < 1000 ms)"
            )
            reporter.stop()
            base = spool.stats().sent
            for start in range(0, args.backlog, 500):
                spool.append_many([_event(i) for i in range(start, min(args.backlog, start + 500))])
            started = time.perf_counter()
            reporter = reporter_for_url(
                spool,
                url=f"http://127.0.0.1:{port}",
                ca_file=None,
                enroll_secret_file=root / "enroll.secret",
                state_dir=root / "agent",
                config=ReporterConfig(idle_check=30),
            )
            reporter.start()
            while spool.stats().sent < base + args.backlog:
                time.sleep(0.01)
            took = time.perf_counter() - started
            print(
                f"backlog of {args.backlog} events drained in {took:.1f} s"
                f" ({args.backlog / took:.0f} events/s, batches of up to 500, gzip, signed)"
            )
        finally:
            reporter.stop()
            spool.close()
            os.kill(server.pid, signal.SIGTERM)
            server.wait(10)


if __name__ == "__main__":
    main()
