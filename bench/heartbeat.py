"""10k simulated agents heartbeating once a minute, time compressed: the same request rate
(10 000 / 60 s ≈ 167/s, open loop: requests leave on schedule whether or not earlier ones have
answered) against the real ``proscribe collector serve`` on SQLite. Each request is signed by
its own agent's key and uses a fresh connection (an agent's keep-alive does not survive a
minute). Prints p50/p99/max latency, at 1x and 2x the rate, and the CPU per request of the
collector process (and, with ``--postgres``, of the PostgreSQL backends serving its database).

    .venv/bin/python -m bench.heartbeat [--agents 10000] [--seconds 30] [--postgres]
        [--factors 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert

from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.tables import agents
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request
from tests.support.devserver import CollectorProcess
from tests.support.simulate import heartbeat_body


def enroll_fleet(url: str, n: int) -> list[tuple[str, Ed25519PrivateKey]]:
    db = open_database(url)
    upgrade(db)
    fleet = []
    rows = []
    for i in range(n):
        key = Ed25519PrivateKey.generate()
        agent_id = uuid.uuid4().hex
        fleet.append((agent_id, key))
        rows.append(
            {
                "agent_id": agent_id,
                "public_key": public_key_string(key.public_key()),
                "hostname": f"ws-{i:05d}",
                "os": "linux",
                "agent_version": "0.1.0",
                "enrolled_us": 0,
                "enroll_secret_id": None,
                "revoked_us": None,
            }
        )
    with db.write() as conn:
        conn.execute(insert(agents), rows)
    db.dispose()
    return fleet


def payload(i: int) -> bytes:
    return json.dumps(heartbeat_body(f"ws-{i:05d}")).encode()


def run(
    port: int, fleet: list[tuple[str, Ed25519PrivateKey]], rate: float, seconds: float
) -> dict[str, float]:
    total = int(rate * seconds)
    latencies: list[float] = []
    lags: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    bodies = [payload(i) for i in range(len(fleet))]
    start = time.perf_counter() + 0.5

    def one(k: int) -> None:
        due = start + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        index = k % len(fleet)
        agent_id, key = fleet[index]
        body = bodies[index]
        headers = sign_request(key, agent_id, "POST", "/api/v1/heartbeat", body)
        headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/api/v1/heartbeat", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except OSError as err:
            status = 0
            with lock:
                failures.append(str(err))
        finally:
            conn.close()
        t1 = time.perf_counter()
        with lock:
            latencies.append(t1 - t0)
            lags.append(max(0.0, t0 - due))
            if status != 200:
                failures.append(str(status))

    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(one, range(total)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "sent": total,
        "achieved_rate": total / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max": latencies[-1] * 1000,
        "failures": len(failures),
        "client_lag_p99": sorted(lags)[int(len(lags) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--postgres", action="store_true", help="a throwaway PostgreSQL database, not SQLite"
    )
    parser.add_argument("--factors", default="1,2", help="multiples of agents/60 s to send")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.postgres:
            from bench.fleet import PostgresMeter
            from tests.support.postgres import throwaway_database

            url = stack.enter_context(throwaway_database("proscribe_hbbench"))
            meter: PostgresMeter | None = PostgresMeter(url.rsplit("/", 1)[1])
            stack.callback(meter.close)  # type: ignore[union-attr]
        else:
            url = f"sqlite:///{Path(tmp) / 'hb.db'}"
            meter = None
        fleet = enroll_fleet(url, args.agents)
        with CollectorProcess(Path(tmp) / "srv", url) as server:
            base = args.agents / 60.0
            for factor in (float(f) for f in args.factors.split(",")):
                cpu0 = server.cpu_seconds()
                pg0 = meter() if meter else 0.0
                r = run(server.port, fleet, base * factor, args.seconds)
                cpu_ms = (server.cpu_seconds() - cpu0) / r["sent"] * 1000
                pg_ms = ((meter() - pg0) / r["sent"] * 1000) if meter else 0.0
                print(
                    f"{args.agents} agents/min x{factor}: {r['achieved_rate']:.0f} req/s sent "
                    f"({r['sent']:.0f}), latency p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                    f"max {r['max']:.1f} ms, failures {r['failures']:.0f}, "
                    f"client send lag p99 {r['client_lag_p99']:.1f} ms; server CPU "
                    f"{cpu_ms:.2f} ms/request (= {1000 / cpu_ms:.0f} req/s per free core)"
                    + (f"; PostgreSQL CPU {pg_ms:.2f} ms/request" if meter else "")
                )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
