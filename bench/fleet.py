"""Fleet scale on this machine: two real collector replicas (``proscribe collector serve``, uvicorn)
on one PostgreSQL, behind Debian's haproxy (round-robin, keep-alive to the replicas), driven by
simulated agents that enroll over HTTP with their own Ed25519 keys and sign every request as the
agent's reporter does (``core.wire.auth.sign_request``: fresh nonce and time per request).

The heartbeat and ingest load comes from ``bench.loadgen`` (``--gen-procs`` processes, one epoll
loop of raw sockets each): every request is built and signed before its step's clock starts (an
agent signs on its own endpoint, not on the collector's machine; the server accepts a signature's
time for 300 s either way), so the generator's CPU on the clock is the sockets' only, and it is
printed beside the servers' (the signing is printed on its own line).

Prints, with medians over repeats where the figure is a latency:

1. enrollment of ``--agents`` agents over HTTP through haproxy (rate);
2. heartbeats of ``--agents`` agents per minute (open loop: requests leave on schedule whether or
   not earlier ones have answered; one fresh connection per heartbeat, as an agent's once-a-minute
   request finds no keep-alive connection open; one more than 10 s behind schedule is counted
   failed, not sent, and one not answered within the agent's own limit, 35 s, failed too;
   latency from the socket to the last byte of the answer): first contact
   (every host's first heartbeat, which creates its row) and then steady state; p50/p99/max,
   failures by kind (HTTP status, timeout, refused, abandoned, …), CPU per request;
3. ingest: signed batches of 100 events from ``--ingest-agents`` concurrent agents (keep-alive,
   as the reporter drains its spool) across both replicas, beside the raw PostgreSQL insert rate
   measured in the same run (``insert_events`` straight into a fresh database, one connection,
   same batches, the counts rollup included; and plain multi-row INSERT without it);
4. the 90-day compliance report (``GET /report?since=90d`` through haproxy, signed in) over
   ``--events`` stored events; the events beyond those ingested over HTTP are bulk-loaded in
   PostgreSQL (INSERT … SELECT from COPY-loaded templates built by the sample generator; indexes
   rebuilt after; counts recomputed with the migration's SQL; VACUUM ANALYZE), and it says so.

Needs PostgreSQL on 127.0.0.1:5432 (trust) and haproxy (``apt-get install haproxy``). Creates the
database ``proscribe_fleet_bench`` (and ``…_raw``) and drops them at the end. Default sizes are
the fleet issue's (100,000 agents, 10M events: ~15 minutes on 2 cores); for a quick run:

    .venv/bin/python -m bench.fleet --agents 10000 --events 1000000 --ingest-batches 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from bench.ingest import BATCH, make_batches
from bench.loadgen import Agent, Outcome, closed_loop, open_loop, run_workers, signed_request
from proscribe.agent.reporter.transport import DEFAULT_TIMEOUT
from proscribe.collector.storage import open_database, upgrade
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.collector.storage.events import insert_events
from proscribe.core.policy.keys import public_key_string
from tests.support.devserver import CollectorProcess
from tests.support.haproxy import Haproxy, haproxy_path
from tests.support.simulate import heartbeat_body as simulated_heartbeat

DB_NAME = "proscribe_fleet_bench"
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
DAY_US = 86_400 * 1_000_000

Cred = tuple[str, bytes]  # (agent_id, raw Ed25519 private key)
ABANDON_S = 10.0  # a heartbeat this late on its schedule is not sent: counted as failed
LADDER = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # of the target heartbeat rate


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))] * 1000


def _cpu_total() -> float:
    """CPU seconds the whole machine spent busy so far (user, nice, system, irq, softirq:
    every process on it, other people's too; /proc/stat, guest time is inside user)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _steal() -> float:
    """CPU seconds the hypervisor gave to other machines while this one wanted them."""
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[8]) / os.sysconf("SC_CLK_TCK")


def _pid_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PostgresMeter:
    """CPU seconds of the PostgreSQL backends serving this database (other databases' are not
    counted). A pool closes its overflow connections, so backends come and go: a thread reads
    every backend's CPU twice a second and keeps each one's last reading, and the meter is the
    sum of those (a backend's last half second before it exits can be missed). It asks over one
    connection of its own, kept open (a new one each time would fork a backend twice a second)."""

    def __init__(self, database: str) -> None:
        import psycopg

        self.database = database
        self.latest: dict[int, float] = {}
        self._conn = psycopg.connect(ADMIN_DSN, autocommit=True)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._lock:
            pids = [
                int(r[0])
                for r in self._conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
                )
            ]
            for pid in pids:
                cpu = _pid_cpu(pid)
                if cpu:
                    self.latest[pid] = max(cpu, self.latest.get(pid, 0.0))

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._read()
            except Exception:  # a missed reading only: the next one counts
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()

    def __call__(self) -> float:
        self._read()
        return sum(self.latest.values())


def _client_cpu() -> float:
    """CPU seconds of this process and its reaped children (the load generator's workers;
    the replicas and haproxy are still running, so they are not in it)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ----------------------------------------------------------------------------- the database


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)


PG_SETTINGS = (
    "shared_buffers",
    "max_connections",
    "synchronous_commit",
    "fsync",
    "autovacuum",
    "jit",
    "work_mem",
    "max_wal_size",
)


def postgres_settings_line(database: str) -> str:
    """The server settings the figures depend on, as this database sees them (the bench changes
    none: it is the machine's shared server)."""
    import psycopg

    dsn = ADMIN_DSN.replace("dbname=test", f"dbname={database}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
            (list(PG_SETTINGS),),
        ).fetchall()
        version = conn.execute("SELECT current_setting('server_version')").fetchall()
    return (
        f"postgresql {version[0][0]} (the machine's server; the bench changes no setting): "
        + ", ".join(f"{name} {value}" for name, value in rows)
    )


KEYS_LOADED = re.compile(r"loaded (\d+) agent keys in ([\d.]+) s")


def rolling_restart(replica: CollectorProcess, timeout: float = 300.0) -> str:
    """Stop and start ``replica``; wait until it has loaded the agents' keys (its log says)."""
    replica.stop()
    replica.log.write_text("", encoding="utf-8")
    replica.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = KEYS_LOADED.search(replica.log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return (
                f"replica on port {replica.port} restarted: loaded {int(found[1]):,} agent "
                f"keys in {float(found[2]):.1f} s"
            )
        time.sleep(0.2)
    raise RuntimeError(f"replica on port {replica.port} did not load the agents' keys")


# The tables every heartbeat rewrites or adds to (an upsert per heartbeat, a nonce per request).
CHURNED_TABLES = ("hosts", "nonces", "host_history")


def vacuum(database: str, tables: tuple[str, ...]) -> None:
    """``VACUUM ANALYZE`` of ``tables`` in the bench's database, as autovacuum would."""
    import psycopg

    dsn = ADMIN_DSN.replace("dbname=test", f"dbname={database}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")


def _url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


# ----------------------------------------------------------------------------- enrollment


def heartbeat_body(i: int) -> dict[str, Any]:
    """Agent ws-{i:06d}'s heartbeat, as the agent's reporter sends it (agent/heartbeat.py)."""
    return simulated_heartbeat(f"ws-{i:06d}", f"{i:032x}")


def heartbeat_payload(i: int) -> bytes:
    return json.dumps(heartbeat_body(i)).encode()


def _enroll_worker(args: tuple[int, int, int, str, str]) -> list[tuple[int, str, bytes]]:
    """Enroll agents ``start, start+step, …`` below ``n`` over HTTP (keep-alive per thread)."""
    start, step, n, base, secret = args
    port = int(base.rsplit(":", 1)[1])
    indices = list(range(start, n, step))
    out: list[tuple[int, str, bytes]] = []
    lock = threading.Lock()

    def run(mine: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        got: list[tuple[int, str, bytes]] = []
        for i in mine:
            key = Ed25519PrivateKey.generate()
            body = json.dumps(
                {
                    "secret": secret,
                    "hostname": f"ws-{i:06d}",
                    "os": "linux",
                    "agent_version": "0.1.0",
                    "public_key": public_key_string(key.public_key()),
                    "machine_id": f"{i:032x}",
                }
            ).encode()
            for attempt in range(3):
                try:
                    conn.request(
                        "POST", "/api/v1/enroll", body, {"Content-Type": "application/json"}
                    )
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    if attempt == 2:
                        raise
            if resp.status != 200:
                raise RuntimeError(f"enroll {i}: HTTP {resp.status} {data[:200]!r}")
            raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            got.append((i, json.loads(data)["agent_id"], raw))
        conn.close()
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=run, args=(indices[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def enroll(base: str, secret: str, n: int, procs: int) -> tuple[list[Cred], float]:
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_enroll_worker, [(w, procs, n, base, secret) for w in range(procs)])
    elapsed = time.perf_counter() - t0
    # creds[i] is the agent enrolled as ws-{i:06d}
    creds = [(agent_id, raw) for _i, agent_id, raw in sorted(c for part in parts for c in part)]
    return creds, elapsed


def enroll_in_database(url: str, first: int, n: int, procs: int) -> tuple[list[Cred], float]:
    """Agents ``first … n-1`` enrolled by the collector's own storage call (``enroll_agent``,
    what ``POST /api/v1/enroll`` runs after admission), 2,000 a transaction, each with its own
    key made here: the same rows an HTTP enrollment writes, without the HTTP round trip and the
    shared rate-limit and secret-use rows that serialise enrollments (measured separately)."""
    t0 = time.perf_counter()
    step = 2000
    chunks = [(url, lo, min(n, lo + step)) for lo in range(first, n, step)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_enroll_db_worker, chunks)
    return [c for part in parts for c in part], time.perf_counter() - t0


def _enroll_db_worker(args: tuple[str, int, int]) -> list[Cred]:
    url, first, n = args
    from sqlalchemy import select

    from proscribe.collector.storage.agents import enroll_agent
    from proscribe.collector.storage.hosts import HeartbeatRecord, record_heartbeat
    from proscribe.collector.storage.tables import enroll_secrets

    db = open_database(url, pool_size=1)
    creds: list[Cred] = []
    with db.read() as conn:
        secret_id = str(conn.execute(select(enroll_secrets.c.secret_id)).scalar_one())
    now_us = int(time.time() * 1e6)
    for lo in range(first, n, 5000):
        with db.write() as conn:
            for i in range(lo, min(n, lo + 5000)):
                key = Ed25519PrivateKey.generate()
                agent_id = enroll_agent(
                    conn,
                    public_key=public_key_string(key.public_key()),
                    hostname=f"ws-{i:06d}",
                    os_name="linux",
                    agent_version="0.1.0",
                    secret_id=secret_id,
                    now_us=now_us,
                    machine_id=f"{i:032x}",
                )
                raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
                creds.append((agent_id, raw))
                # Its first heartbeat too (the host row and its "first" history row), by the
                # storage call the heartbeat route makes: the runs below are steady state.
                hb = heartbeat_body(i)
                record_heartbeat(
                    conn,
                    HeartbeatRecord(
                        agent_id=agent_id,
                        hostname=hb["hostname"],
                        os=hb["os"],
                        agent_version=hb["agent_version"],
                        mode=hb["mode"],
                        policy_id=hb["policy"]["id"],
                        policy_serial=hb["policy"]["serial"],
                        policy_sha256=hb["policy"]["sha256"],
                        policy_stale=False,
                        sensors=hb["sensors"],
                        spool_depth=0,
                        spool_bytes=0,
                        dropped=0,
                        agent_time=hb["time"],
                        machine_id=hb["machine_id"],
                    ),
                    now_us,
                    180_000_000,
                )
    db.dispose()
    return creds


# ----------------------------------------------------------------------------- heartbeats


_FLEET: list[Cred] = []  # set before the load generator's processes fork (not pickled)
HEARTBEAT_PATH = "/api/v1/heartbeat"
EVENTS_PATH = "/api/v1/events"


def _heartbeat_requests(
    args: tuple[int, int, int, float, int, str],
) -> list[tuple[float, bytes]]:
    """Worker ``w``'s heartbeats ``k = w, w+procs, …`` below ``total``: heartbeat k is agent
    ``(k + offset) % len``'s, due ``k / rate`` after the start, its whole request signed now
    (fresh nonce and time). This is the agents' own CPU (each signs on its endpoint), spent
    before the step's clock starts; the server accepts a signature's time for 300 s."""
    w, procs, total, rate, offset, host = args
    creds = _FLEET
    keys: dict[int, Ed25519PrivateKey] = {}
    schedule = []
    for k in range(w, total, procs):
        index = (k + offset) % len(creds)
        key = keys.get(index)
        if key is None:
            key = keys[index] = Ed25519PrivateKey.from_private_bytes(creds[index][1])
        body = heartbeat_payload(index)
        payload = signed_request(key, creds[index][0], HEARTBEAT_PATH, body, host)
        schedule.append((k / rate, payload))
    return schedule


def _send_heartbeats(port: int, schedule: list[tuple[float, bytes]], start: float) -> Outcome:
    # An answer later than the agent's own limit (5 s to connect + 30 s to read) is a failure
    # the agent would see too: counted as "timeout", and an overloaded step ends in bounded time.
    return open_loop(port, schedule, start, abandon_s=ABANDON_S, timeout_s=sum(DEFAULT_TIMEOUT))


@dataclass
class Load:
    sent: int
    elapsed: float
    rate: float
    p50: float
    p99: float
    max: float
    failures: Counter[str]
    examples: list[str]
    lag_p99: float
    cpu: dict[str, float]
    sign_cpu: float  # the workers' CPU signing the requests before the clock
    backend: tuple[int, int] | None = None  # haproxy's (replica connections opened, reused)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def _metered(
    meters: dict[str, Any],
) -> tuple[Callable[[], None], Callable[[], None], dict[str, float]]:
    """(on_start, on_end, cpu): ``cpu`` is filled at ``on_end`` with each meter's CPU seconds
    since ``on_start``."""
    cpu0: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def on_start() -> None:
        cpu0.update({name: f() for name, f in meters.items()})

    def on_end() -> None:
        cpu.update({name: f() - cpu0[name] for name, f in meters.items()})

    return on_start, on_end, cpu


def _generator_cpu(cpu: dict[str, float], outcomes: list[Outcome]) -> None:
    """The load generator's CPU over a run: this process's (the meter holds it: the workers
    are not reaped yet) and each worker's own from the start time to its last answer."""
    if "load generator" in cpu:
        cpu["load generator"] += sum(o.send_cpu for o in outcomes)


def heartbeats(
    port: int,
    creds: list[Cred],
    rate: float,
    seconds: float,
    procs: int,
    meters: dict[str, Any],
    offset: int = 0,
    proxy: Haproxy | None = None,
) -> Load:
    total = max(1, int(rate * seconds))
    global _FLEET
    _FLEET = creds
    on_start, on_end, cpu = _metered(meters)
    host = f"127.0.0.1:{port}"
    work = [(w, procs, total, rate, offset, host) for w in range(min(procs, total))]
    before = proxy.backend_connections() if proxy else (0, 0)
    start, outcomes = run_workers(
        _heartbeat_requests, partial(_send_heartbeats, port), work, on_start, on_end
    )
    after = proxy.backend_connections() if proxy else (0, 0)
    # The step lasts its schedule (total / rate) or until its last answer, if later: answers
    # that keep up give the target rate, answers that fall behind a lower one.
    elapsed = max(max(o.end for o in outcomes) - start, total / rate)
    _generator_cpu(cpu, outcomes)
    latencies = [x for o in outcomes for x in o.latencies]
    lags = [x for o in outcomes for x in o.lags]
    return Load(
        sent=total,
        elapsed=elapsed,
        rate=total / elapsed,
        p50=_ms(latencies, 0.5),
        p99=_ms(latencies, 0.99),
        max=max(latencies, default=float("nan")) * 1000,
        failures=sum((o.failures for o in outcomes), Counter()),
        examples=[x for o in outcomes for x in o.examples],
        lag_p99=_ms(lags, 0.99),
        cpu=cpu,
        sign_cpu=sum(o.prep_cpu for o in outcomes),
        backend=(after[0] - before[0], after[1] - before[1]) if proxy else None,
    )


# ----------------------------------------------------------------------------- ingest


def _ingest_agents(args: tuple[list[Cred], int, int, str]) -> list[Agent]:
    """One worker's agents, each with its batches of events (as a spool holds them) and every
    batch's request signed now, before the clock starts (the agents' own CPU)."""
    creds, batches_each, seed, host = args
    random.seed(seed)
    agents = []
    for agent_id, raw in creds:
        key = Ed25519PrivateKey.from_private_bytes(raw)
        bodies = [json.dumps({"events": b}).encode() for b in make_batches(batches_each)]

        def resign(i: int, key: Ed25519PrivateKey = key, agent_id: str = agent_id,
                   bodies: list[bytes] = bodies) -> bytes:  # fmt: skip
            return signed_request(key, agent_id, EVENTS_PATH, bodies[i], host)

        agents.append(Agent([resign(i) for i in range(len(bodies))], resign))
    return agents


def _send_batches(port: int, agents: list[Agent], start: float) -> Outcome:
    return closed_loop(port, agents)


@dataclass
class Ingest:
    events: int  # stored: batches answered 200, times BATCH
    rate: float  # stored events / (last answer - start)
    p50: float
    p99: float
    failures: Counter[str]
    examples: list[str]
    cpu: dict[str, float]
    sign_cpu: float
    wall: float


def ingest(
    port: int, creds: list[Cred], batches: int, procs: int, meters: dict[str, Any]
) -> Ingest:
    """Each agent posts its batches one after the other on one keep-alive connection (the
    reporter draining its spool), all agents at once, spread over ``procs`` workers."""
    per_agent = max(1, batches // len(creds))
    host = f"127.0.0.1:{port}"
    work = [(creds[w::procs], per_agent, w, host) for w in range(procs) if creds[w::procs]]
    on_start, on_end, cpu = _metered(meters)
    start, outcomes = run_workers(
        _ingest_agents, partial(_send_batches, port), work, on_start, on_end
    )
    wall = max(o.end for o in outcomes) - start
    _generator_cpu(cpu, outcomes)
    latencies = [x for o in outcomes for x in o.latencies]
    stored = sum(o.statuses[200] for o in outcomes) * BATCH
    return Ingest(
        events=stored,
        rate=stored / wall,
        p50=_ms(latencies, 0.5),
        p99=_ms(latencies, 0.99),
        failures=sum((o.failures for o in outcomes), Counter()),
        examples=[x for o in outcomes for x in o.examples],
        cpu=cpu,
        sign_cpu=sum(o.prep_cpu for o in outcomes),
        wall=wall,
    )


def raw_inserts(url: str, batches: list[list[dict[str, Any]]]) -> tuple[float, float]:
    """(events/s through ``insert_events`` incl. the counts rollup, events/s of the same rows by
    the driver alone: psycopg ``executemany`` of a plain INSERT, no counts, no conflict check):
    one connection, one transaction a batch."""
    from proscribe.collector.ingest import judge_events
    from proscribe.collector.storage.events import body_text
    from proscribe.collector.storage.tables import events

    db = open_database(url)
    upgrade(db)
    now_us = int(time.time() * 1_000_000)
    rows = [judge_events(b, agent_id="raw", hostname="raw", now_us=now_us)[1] for b in batches]
    start = time.perf_counter()
    for chunk in rows:
        with db.write() as conn:
            insert_events(conn, chunk)
    with_counts = len(rows) * BATCH / (time.perf_counter() - start)
    for chunk in rows:
        for row in chunk:
            row["event_id"] = str(uuid.uuid4())  # the same rows again, as new events
            row["body"] = body_text(row["body"])  # encoded as a spool would hold it
    columns = [c.name for c in events.columns if c.name != "seq"]
    sql = f"INSERT INTO events ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        start = time.perf_counter()
        for chunk in rows:
            cursor.executemany(sql, [tuple(row[c] for c in columns) for row in chunk])
            raw.commit()
        plain = len(rows) * BATCH / (time.perf_counter() - start)
    finally:
        raw.close()
    db.dispose()
    return with_counts, plain


# ----------------------------------------------------------------------------- bulk load + report


def bulk_load(url: str, creds: list[Cred], target: int) -> tuple[int, float]:
    """Fill ``events`` up to ``target`` rows spread over the last 90 days. Templates (event
    bodies from the dashboard's sample generator, one per agent up to 50,000, agents of this
    fleet) are COPY-loaded; PostgreSQL then writes the rows with a fresh id and time each
    (``INSERT … SELECT … generate_series``), indexes dropped during the load and rebuilt, the
    counts recomputed with the migration's SQL, and the table vacuumed and analyzed."""
    import psycopg

    from tests.support.sample import event_row, make_event

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM events").fetchone()
        assert have is not None
        missing = target - int(have[0])
        if missing <= 0:
            return 0, 0.0
        rng = random.Random(16)
        n_templates = min(50_000, len(creds))
        conn.execute(
            "CREATE UNLOGGED TABLE fleet_templates (i int, agent_id text, hostname text, "
            "username text, rule text, kind text, action text, severity text, body jsonb)"
        )
        now = time.time()
        with conn.cursor().copy(
            "COPY fleet_templates (i, agent_id, hostname, username, rule, kind, action, "
            "severity, body) FROM STDIN"
        ) as copy:
            for i in range(n_templates):
                agent_id = creds[i][0]
                row = event_row(make_event(rng, now, agent_id, f"ws-{i:06d}"), 0)
                copy.write_row(
                    (
                        i,
                        agent_id,
                        row["hostname"],
                        row["username"],
                        row["rule"],
                        row["kind"],
                        row["action"],
                        row["severity"],
                        row["body"],
                    )
                )
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = 'events'::regclass AND contype = 'p')"
        ).fetchall()
        uniques = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'events'::regclass AND contype = 'u'"
        ).fetchall()
        for name, _definition in uniques:
            conn.execute(f'ALTER TABLE events DROP CONSTRAINT "{name}"')
        unique_names = {u[0] for u in uniques}
        for name, _definition in indexes:
            if name not in unique_names:
                conn.execute(f'DROP INDEX "{name}"')
        now_us = int(now * 1e6) - 60_000_000
        span = 90 * DAY_US - 120_000_000
        chunk = 1_000_000
        done = 0
        while done < missing:
            n = min(chunk, missing - done)
            conn.execute(
                "INSERT INTO events (event_id, agent_id, time_us, received_us, hostname, "
                "username, rule, kind, action, severity, body) "
                "SELECT e.id, t.agent_id, e.t, e.t, t.hostname, t.username, t.rule, t.kind, "
                "t.action, t.severity, jsonb_set(jsonb_set(t.body, '{id}', to_jsonb(e.id)), "
                "'{time}', to_jsonb(to_char(to_timestamp(e.t / 1e6) AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')))::text '
                "FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g "
                "CROSS JOIN LATERAL (SELECT gen_random_uuid()::text AS id, "
                "%(now)s::bigint - (floor(random() * %(span)s))::bigint - g * 0 AS t) AS e "
                "JOIN fleet_templates t ON t.i = g %% %(n)s",
                {"lo": done, "hi": done + n - 1, "now": now_us, "span": span, "n": n_templates},
            )
            done += n
            print(
                f"    bulk load: {done:,}/{missing:,} rows ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        for name, definition in uniques:
            conn.execute(f'ALTER TABLE events ADD CONSTRAINT "{name}" {definition}')
        for name, definition in indexes:
            if name not in unique_names:
                conn.execute(definition)
        conn.execute("DROP TABLE fleet_templates")
        print(f"    indexes rebuilt ({time.perf_counter() - started:.0f} s)", flush=True)
    db = open_database(url)
    from proscribe.collector.storage import counts

    with db.write() as sa_conn:
        counts.recount(sa_conn)
    db.dispose()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE violation_counts")
        conn.execute("VACUUM ANALYZE violation_blocks")
        # Every other table's statistics as autovacuum would have them by now (it is off on
        # this server): unanalysed, `agents` (100,000 rows) was planned as 63 rows and the
        # report's stale hosts joined it to `hosts` by 100,000 index probes (0.3 s, not 0.06).
        conn.execute("ANALYZE")
    return missing, time.perf_counter() - started


def storage_line(url: str) -> str:
    """What the stored events take on disk (table, TOAST and indexes) per event."""
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM events), pg_total_relation_size('events'), "
            "pg_indexes_size('events'), pg_total_relation_size('violation_counts'), "
            "(SELECT count(*) FROM violation_counts), pg_total_relation_size('hosts'), "
            "(SELECT count(*) FROM hosts), pg_total_relation_size('violation_blocks'), "
            "(SELECT count(*) FROM violation_blocks)"
        ).fetchone()
    assert row is not None
    n, total, indexes, vc_bytes, vc_rows, hosts_bytes, hosts, vb_bytes, vb_rows = (
        int(x) for x in row
    )
    return (
        f"storage: events {total / 1e9:.2f} GB for {n:,} ({total / max(n, 1):.0f} bytes an "
        f"event, of which indexes {indexes / max(n, 1):.0f}); violation_counts {vc_rows:,} rows "
        f"{vc_bytes / 1e6:.0f} MB; violation_blocks {vb_rows:,} rows {vb_bytes / 1e6:.0f} MB; "
        f"hosts {hosts:,} rows {hosts_bytes / 1e6:.0f} MB"
    )


def report_breakdown(url: str) -> list[str]:
    """Where the report's time goes: ``build_report`` and its HTML run in-process under
    cProfile once (cumulative seconds of its parts), and the one query over every event of the
    period (violations per agent, for the top hosts) under EXPLAIN ANALYZE."""
    import cProfile
    import pstats

    from sqlalchemy import text

    from proscribe.collector.web.report import build_report, report_html

    db = open_database(url)
    now_us = int(time.time() * 1e6)
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    with db.read() as conn:
        profile.enable()
        report = build_report(
            conn,
            since_us=now_us - 90 * DAY_US,
            until_us=now_us,
            now_us=now_us,
            heartbeat_window_s=180,
        )
        built = time.perf_counter()
        html = report_html(report, standalone=False)
        profile.disable()
        rendered = time.perf_counter()
        plan = conn.execute(
            text(
                "EXPLAIN (ANALYZE, BUFFERS OFF) SELECT agent_id, count(*) FROM events "
                "WHERE kind IN ('process', 'dns', 'file', 'model', 'tamper') "
                "AND time_us >= :since AND time_us < :until GROUP BY agent_id "
                "ORDER BY count(*) DESC LIMIT 20"
            ),
            {"since": now_us - 90 * DAY_US, "until": now_us},
        ).all()
    db.dispose()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    parts = {
        "_totals": "totals (counts table + edge days)",
        "_bodies": "newest 500 violations and blocks",
        "fleet": "every host's state (fleet)",
        "period_coverage": "coverage over the period",
        "coverage": "coverage tiles",
        "_stale_agents": "stale hosts",
        "model_findings": "model findings",
    }
    found: dict[str, float] = {}
    for (filename, _line, name), row in stats.items():
        if name in parts and "proscribe" in filename:
            found[name] = max(found.get(name, 0.0), row[3])
    lines = [
        f"report in-process: build {built - t0:.2f} s, HTML {rendered - built:.2f} s "
        f"({len(html) / 1e6:.1f} MB) under cProfile; "
        + ", ".join(f"{parts[n]} {found[n]:.2f} s" for n in parts if n in found)
    ]
    total = [str(r[0]) for r in plan if "Execution Time" in str(r[0])]
    lines.append(
        "violations per agent over the 90 days (EXPLAIN ANALYZE): "
        + (total[0].strip() if total else "?")
        + "; plan: "
        + " / ".join(str(r[0]).strip() for r in plan[:4])
    )
    return lines


def sign_in(base: str, user: str, password: str) -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback only
    login = session.get(f"{base}/login", timeout=60)
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
    if csrf is None:
        raise RuntimeError("no sign-in form")
    reply = session.post(
        f"{base}/login",
        data={"username": user, "password": password, "csrf": csrf.group(1), "next": "/"},
        timeout=60,
        allow_redirects=False,
    )
    if reply.status_code != 303:
        raise RuntimeError(f"sign-in: HTTP {reply.status_code}")
    return session


def report_times(session: Any, base: str, repeats: int) -> tuple[list[float], int]:
    times = []
    size = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        reply = session.get(f"{base}/report?since=90d", timeout=600)
        times.append(time.perf_counter() - t0)
        if reply.status_code != 200:
            raise RuntimeError(f"report: HTTP {reply.status_code} {reply.text[:300]}")
        size = len(reply.content)
    return times, size


# ----------------------------------------------------------------------------- main


def _failures(failures: Counter[str], examples: list[str]) -> str:
    """``0``, or the count by kind and the first example: ``3 (timeout 2, HTTP 503 1; e.g. …)``."""
    total = sum(failures.values())
    if not total:
        return "0"
    kinds = ", ".join(f"{kind} {n}" for kind, n in failures.most_common())
    return f"{total} ({kinds}" + (f"; e.g. {examples[0][:160]}" if examples else "") + ")"


def _print_heartbeats(label: str, rate: float, r: Load) -> None:
    print(
        f"heartbeats, {label}: target {rate:.0f}/s, achieved {r.rate:.0f}/s over {r.sent:,} "
        f"requests; latency p50 {r.p50:.1f} ms, p99 {r.p99:.1f} ms, max {r.max:.0f} ms; "
        f"failures {_failures(r.failures, r.examples)}; client send lag p99 {r.lag_p99:.1f} ms"
        + ("  [p99 < 100 ms]" if r.p99 < 100 and not r.failed else "  [p99 >= 100 ms]"),
        flush=True,
    )
    print("    " + _cpu_line(r.cpu, r.sent, "heartbeat", r.elapsed), flush=True)
    reuse = ""
    if r.backend is not None:
        reuse = (
            f"; haproxy opened {r.backend[0]:,} connections to the replicas and sent "
            f"{r.backend[1]:,} requests on reused ones"
        )
    print(
        f"    signed before the step (the agents' own CPU, not in the figures above): "
        f"{r.sign_cpu / r.sent * 1000:.2f} ms per heartbeat" + reuse,
        flush=True,
    )


def _cpu_line(cpu: dict[str, float], per: float, unit: str, elapsed: float) -> str:
    parts = [f"{name} {seconds / per * 1000:.2f}" for name, seconds in cpu.items()]
    busy = cpu.get("machine", 0.0) / elapsed / (os.cpu_count() or 1) * 100
    return (
        f"CPU ms per {unit}: " + ", ".join(parts) + f" (machine = every process on it; "
        f"busy {busy:.0f}% of {os.cpu_count()} cores over {elapsed:.0f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=100_000, help="fleet size (default 100000)")
    parser.add_argument(
        "--hb-seconds", type=float, default=20.0, help="seconds of each heartbeat step (20)"
    )
    parser.add_argument(
        "--enroll-http", type=int, default=2000, help="agents enrolled over HTTP (2000)"
    )
    parser.add_argument("--ingest-agents", type=int, default=16)
    parser.add_argument(
        "--ingest-batches", type=int, default=1000, help="batches of 100 events (1000)"
    )
    parser.add_argument("--events", type=int, default=10_000_000, help="events for the report")
    parser.add_argument("--report-repeats", type=int, default=5)
    parser.add_argument(
        "--procs", type=int, default=4, help="enrollment processes, 4 threads each (4)"
    )
    parser.add_argument(
        "--gen-procs",
        type=int,
        default=2,
        help="heartbeat and ingest load-generator processes, one epoll loop each (2)",
    )
    parser.add_argument(
        "--http-reuse",
        default="always",
        choices=("never", "safe", "always"),
        help="haproxy's reuse of idle replica connections (always; why: docs/scale.md)",
    )
    parser.add_argument("--haproxy-threads", type=int, default=1, help="haproxy nbthread (1)")
    parser.add_argument(
        "--database", default=DB_NAME, help=f"database to create and drop ({DB_NAME})"
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = parser.parse_args(argv)
    for name in (
        "agents",
        "enroll_http",
        "ingest_agents",
        "ingest_batches",
        "procs",
        "gen_procs",
        "haproxy_threads",
        "report_repeats",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hb_seconds <= 0 or args.events < 0:
        parser.error("--hb-seconds must be positive and --events not negative")
    if haproxy_path() is None:
        print("bench.fleet: haproxy is not installed; apt-get install haproxy", file=sys.stderr)
        return 2
    free = shutil.disk_usage("/var/lib/postgresql" if Path("/var/lib/postgresql").exists() else "/")
    need = args.events * 1200  # ~1.2 kB a stored event with its indexes (measured: see docs)
    if free.free < need * 1.5:
        print(
            f"bench.fleet: {args.events:,} events need ~{need / 1e9:.0f} GB and "
            f"{free.free / 1e9:.0f} GB are free; pass a smaller --events",
            file=sys.stderr,
        )
        return 2
    print(
        f"fleet bench: {args.agents:,} agents, 2 replicas behind haproxy, PostgreSQL; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    name = args.database
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,50}", name):
        parser.error("--database: lower-case letters, digits and _ only")
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'DROP DATABASE IF EXISTS "{name}_raw" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    try:
        print(postgres_settings_line(name), flush=True)
        return _run(args, _url(name))
    finally:
        if not args.keep_db:
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _admin(f'DROP DATABASE IF EXISTS "{name}_raw" WITH (FORCE)')


def _run(args: argparse.Namespace, url: str) -> int:
    from tests.support.sample import create_user

    db = open_database(url)
    upgrade(db)
    with db.write() as conn:
        secret = create_enroll_secret(conn, "fleet-bench", 0)[1]
    password = create_user(db, "auditor", "viewer")
    db.dispose()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        base = Path(tmp)
        key_file = base / "session.key"
        key_file.write_bytes(os.urandom(32).hex().encode())
        key_file.chmod(0o600)
        server_toml = f'behind_proxy = true\nsession_key_file = "{key_file}"\n'
        limits = (
            "[enroll]\nper_ip_burst = 1000000\nper_ip_rate = 100000\n"
            "global_burst = 1000000\nglobal_rate = 100000\n"
        )
        replicas = [
            CollectorProcess(
                base / f"r{i}", url, server_toml=server_toml, extra_toml=limits, verbose=True
            )
            for i in range(2)
        ]
        proxy = Haproxy(
            base / "haproxy",
            [r.port for r in replicas],
            http_reuse=args.http_reuse,
            nbthread=args.haproxy_threads,
        )
        try:
            for replica in replicas:
                replica.start()
            proxy.start()
            pg_meter = PostgresMeter(args.database)
            meters: dict[str, Any] = {
                "replica0": replicas[0].cpu_seconds,
                "replica1": replicas[1].cpu_seconds,
                "haproxy": proxy.cpu_seconds,
                "postgres": pg_meter,
                "load generator": _client_cpu,
                "machine": _cpu_total,
                "steal": _steal,
            }
            try:
                return _phases(args, url, proxy, replicas, secret, password, meters)
            finally:
                pg_meter.close()
        finally:
            proxy.stop()
            for replica in replicas:
                replica.stop()


def _phases(
    args: argparse.Namespace,
    url: str,
    proxy: Haproxy,
    replicas: list[CollectorProcess],
    secret: str,
    password: str,
    meters: dict[str, Any],
) -> int:
    # 1. Enrollment: --enroll-http agents for real through haproxy (the rate), the rest by
    # the collector's own storage call (enrollment is once per machine, not the load).
    over_http = min(args.agents, args.enroll_http)
    creds, took = enroll(proxy.url, secret, over_http, args.procs)
    print(
        f"enrolled {len(creds):,} agents over HTTP through haproxy in {took:.1f} s "
        f"({len(creds) / took:.0f}/s; each with its own Ed25519 key made by the client)",
        flush=True,
    )
    if over_http < args.agents:
        more, took = enroll_in_database(url, over_http, args.agents, args.procs)
        creds += more
        print(
            f"enrolled {len(more):,} more agents in the database with the collector's "
            f"enroll_agent (pre-computed: same rows, own keys, no HTTP) in {took:.0f} s",
            flush=True,
        )
        # A replica that has run for a while holds every agent's key (it loads them when it
        # starts, and caches each new one): restarted one at a time, as in a rolling upgrade,
        # so the steady state is measured, not every agent's first request to a replica.
        for replica in replicas:
            print(f"    {rolling_restart(replica)}", flush=True)

    # 2. Heartbeats. First contact of the agents enrolled over HTTP (their host rows are made
    # now); then steady state (every host already known) in steps up to the target rate,
    # stopping after a step that falls behind (an overloaded step only measures the backlog).
    target = args.agents / 60.0
    first_rate = min(target, 100.0)
    r = heartbeats(proxy.port, creds[:over_http], first_rate, over_http / first_rate,
                   args.gen_procs, meters, 0, proxy)  # fmt: skip
    _print_heartbeats(f"first contact of {over_http:,} hosts", first_rate, r)
    best = 0.0
    for fraction in LADDER:
        rate = target * fraction
        # What autovacuum would do (it is off on this machine's server, and the bench changes
        # no setting): the dead rows each step's upserts and nonces leave, cleared before the next.
        vacuum(args.database, CHURNED_TABLES)
        r = heartbeats(
            proxy.port, creds, rate, args.hb_seconds, args.gen_procs, meters, over_http, proxy
        )
        _print_heartbeats(f"steady state, {fraction:.1%} of target", rate, r)
        ok = r.failed == 0 and r.p99 < 100 and r.rate >= 0.95 * rate
        if ok:
            best = rate
        if r.failed or r.rate < 0.9 * rate or r.p99 > 1000:
            break
    print(
        f"heartbeats: highest step met (p99 < 100 ms, no failures) {best:.0f}/s "
        f"= {best * 60:,.0f} agents/min; target {target:.0f}/s"
        + ("  [MET]" if best >= target else "  [NOT MET on this machine]"),
        flush=True,
    )

    # 3. Ingest across the replicas, and raw inserts in the same run.
    ing_creds = creds[: args.ingest_agents]
    r2 = ingest(proxy.port, ing_creds, args.ingest_batches, args.gen_procs, meters)
    if r2.failures:
        print(f"ingest: failed batches {_failures(r2.failures, r2.examples)}", flush=True)
    _admin(f'CREATE DATABASE "{args.database}_raw"')
    raw_counts, raw_plain = raw_inserts(
        _url(f"{args.database}_raw"), make_batches(max(50, args.ingest_batches // 4))
    )
    print(
        f"ingest over HTTP through haproxy: {r2.rate:.0f} events/s "
        f"({r2.events:,} events in {r2.wall:.1f} s, {args.ingest_agents} agents x batches of "
        f"{BATCH}, one keep-alive connection each; batch p50 {r2.p50:.0f} ms, "
        f"p99 {r2.p99:.0f} ms)"
        + ("  [>= 10k/s: MET]" if r2.rate >= 10_000 else "  [>= 10k/s: NOT MET]"),
        flush=True,
    )
    per_k = max(r2.events, 1) / 1000
    print("    " + _cpu_line(r2.cpu, per_k, "1000 events", r2.wall), flush=True)
    print(
        f"    built and signed before the clock (the agents' own CPU, not in the figures "
        f"above): {r2.sign_cpu / per_k * 1000:.2f} ms per 1000 events",
        flush=True,
    )
    print(
        f"raw PostgreSQL inserts, same run, one connection: insert_events (with counts) "
        f"{raw_counts:.0f} events/s, driver executemany of a plain INSERT "
        f"{raw_plain:.0f} events/s; "
        f"ratio HTTP/raw {r2.rate / raw_counts:.2f} (with counts), "
        f"{r2.rate / raw_plain:.2f} (plain)",
        flush=True,
    )

    # 4. The 90-day report over --events stored events.
    if args.events:
        loaded, took = bulk_load(url, creds, args.events)
        print(
            f"bulk-loaded {loaded:,} events in PostgreSQL (not over HTTP: INSERT … SELECT from "
            f"COPY-loaded templates, indexes rebuilt, counts recomputed, VACUUM ANALYZE) "
            f"in {took:.0f} s",
            flush=True,
        )
        print("    " + storage_line(url), flush=True)
        session = sign_in(proxy.url, "auditor", password)
        cpu0 = {name: f() for name, f in meters.items()}
        times, size = report_times(session, proxy.url, args.report_repeats)
        cpu = {name: f() - cpu0[name] for name, f in meters.items()}
        med = statistics.median(times)
        print(
            f"90-day report over {args.events:,} events: median {med:.2f} s, "
            f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} requests "
            f"({size / 1024:.0f} KiB of HTML)"
            + ("  [< 5 s: MET]" if med < 5 else "  [< 5 s: NOT MET]"),
            flush=True,
        )
        print("    " + _cpu_line(cpu, len(times), "report", sum(times)), flush=True)
        for line in report_breakdown(url):
            print("    " + line, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
