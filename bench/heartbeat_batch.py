"""The heartbeat batch write alone (storage.heartbeat_batch.store_heartbeats), no HTTP: CPU per
heartbeat of this process (Python: SQLAlchemy, psycopg, the history diff) and of its
PostgreSQL backend, for the single-heartbeat path before the batches and for batches of 1, 10
and 100 steady heartbeats (each agent's host row
exists; nothing changed, so no history rows), on a throwaway database.

    .venv/bin/python -m bench.heartbeat_batch [--agents 2000] [--rounds 5]

Prints, per batch size, the median over rounds of the CPU per heartbeat (ms).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from sqlalchemy import insert

from bench.fleet import _pid_cpu
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.agents import consume_nonce, get_agent
from proscribe.collector.storage.heartbeat_batch import PendingHeartbeat, store_heartbeats
from proscribe.collector.storage.hosts import HeartbeatRecord, record_heartbeat
from proscribe.collector.storage.policies import current_policy_ref
from proscribe.collector.storage.signers import list_signers
from proscribe.collector.storage.tables import agents
from tests.support.postgres import throwaway_database


def _record(agent_id: str) -> HeartbeatRecord:
    return HeartbeatRecord(
        agent_id=agent_id,
        hostname=f"ws-{agent_id[:6]}",
        os="linux",
        agent_version="0.1.0",
        mode="enforce",
        policy_id="p",
        policy_serial=7,
        policy_sha256="ab" * 32,
        policy_stale=False,
        sensors={"process": "netlink", "dns": "proxy"},
        spool_depth=0,
        spool_bytes=0,
        dropped=0,
        agent_time=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with throwaway_database("proscribe_hbbatch") as url:
        db = open_database(url)
        upgrade(db)
        ids = [uuid.uuid4().hex for _ in range(args.agents)]
        with db.write() as conn:
            conn.execute(
                insert(agents),
                [
                    {
                        "agent_id": a,
                        "public_key": f"k{a}",
                        "hostname": f"ws-{a[:6]}",
                        "os": "linux",
                        "agent_version": "0.1.0",
                        "enrolled_us": 0,
                    }
                    for a in ids
                ],
            )
        conn = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("SET synchronous_commit = off")
        backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

        def write_all(size: int) -> tuple[float, float]:
            py0, pg0 = time.process_time(), _pid_cpu(backend)
            for start in range(0, len(ids), size):
                batch = [
                    PendingHeartbeat(_record(a), uuid.uuid4().hex, 2**60)
                    for a in ids[start : start + size]
                ]
                store_heartbeats(conn, batch, int(time.time() * 1e6), None)
            n = len(ids)
            return (time.process_time() - py0) / n * 1000, (_pid_cpu(backend) - pg0) / n * 1000

        def single_all() -> tuple[float, float]:
            """The path before the batches: each heartbeat its own transaction of single
            statements on a pooled connection (agent, nonce, host row, policy, signers)."""
            pids: set[int] = set()
            py0 = time.process_time()
            cpu0: dict[int, float] = {}
            for a in ids:
                with db.write(durable=False) as one:
                    pid = int(one.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                    if pid not in pids:
                        pids.add(pid)
                        cpu0[pid] = _pid_cpu(pid)
                    get_agent(one, a)
                    consume_nonce(one, a, uuid.uuid4().hex, 2**60)
                    record_heartbeat(one, _record(a), int(time.time() * 1e6), None)
                    current_policy_ref(one)
                    list_signers(one)
            pg = sum(_pid_cpu(p) - cpu0[p] for p in pids)
            n = len(ids)
            return (time.process_time() - py0) / n * 1000, pg / n * 1000

        write_all(100)  # first heartbeats: the host rows exist from here on
        single_all()
        runs = [single_all() for _ in range(args.rounds)]
        print(
            f"single  : Python {statistics.median(r[0] for r in runs):.3f} ms/heartbeat, "
            f"PostgreSQL {statistics.median(r[1] for r in runs):.3f} ms/heartbeat (before the "
            "batches; the pid query adds a little to both)"
        )
        for size in (1, 10, 100):
            write_all(size)  # warm: prepared statements
            runs = [write_all(size) for _ in range(args.rounds)]
            py = statistics.median(r[0] for r in runs)
            pg = statistics.median(r[1] for r in runs)
            print(
                f"batch {size:3d}: Python {py:.3f} ms/heartbeat, PostgreSQL {pg:.3f} ms/heartbeat "
                f"(median of {args.rounds} x {args.agents})"
            )
        conn.close()
        db.dispose()


if __name__ == "__main__":
    main()
