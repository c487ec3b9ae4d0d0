"""Sample data for screenshots, the dashboard benchmark and tests: a fleet, a signed policy
(the US Navy DeepSeek pack with two exemptions, uploaded as serials 1 and 2) and events.

Events are bulk-inserted straight into the events table (the benchmark needs a million of
them, far faster than the signed ingest API allows); tests that need the real path send
events through ``POST /api/v1/events`` instead. The server itself is
:class:`tests.support.devserver.CollectorProcess` (``proscribe collector serve`` in a
child process on a free loopback port).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proscribe.collector.storage import Database, counts, open_database, upgrade
from proscribe.collector.storage.agents import enroll_agent
from proscribe.collector.storage.hosts import HeartbeatRecord, record_heartbeat
from proscribe.collector.storage.policies import StoredPolicy, store_policy
from proscribe.collector.storage.users import add_user
from proscribe.core.policy.envelope import POLICY_PAYLOAD_TYPE, sign_payload
from proscribe.core.policy.keys import public_key_string

POLICY_ID = "us-navy-deepseek-2025"
DAY = 86_400
RULES = (
    ("deepseek-web", "dns", 0.45),
    ("deepseek-third-party-endpoints", "dns", 0.12),
    ("deepseek-desktop", "process", 0.16),
    ("deepseek-local-runtime", "process", 0.12),
    ("deepseek-model-argument", "process", 0.07),
    ("deepseek-models", "model", 0.08),
)
# What the model guard (agent/model_guard.py) records: a file in a store, read by content.
MODEL_FILES = (
    ("~/.ollama/models/blobs/sha256-{digest}", "gguf", "DeepSeek R1 Distill Qwen 7B", "qwen2"),
    ("~/.cache/huggingface/hub/models--unsloth--DeepSeek-R1-Distill-Llama-8B-GGUF/snapshots/"
     "3f1c0b7e9a2d4c6b8e0f1a2b3c4d5e6f7a8b9c0d/DeepSeek-R1-Distill-Llama-8B-Q4_K_M.gguf",
     "gguf", "DeepSeek R1 Distill Llama 8B", "llama"),
    ("~/.lmstudio/models/my-models/assistant/model.gguf", "gguf", "DeepSeek V2 Lite Chat",
     "deepseek2"),
)  # fmt: skip
QNAMES = ("chat.deepseek.com", "api.deepseek.com", "cdn.deepseek.com", "deepseek.com")
USERS = ("alice", "bob", "chen", "dmitri", "erin", "farah", "gus", "hana", "ivan", "jo")


def _iso(t: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def prepare_database(database_url: str) -> Database:
    """Open and migrate a database (what ``proscribe collector serve`` does on start)."""
    db = open_database(database_url)
    upgrade(db)
    return db


def create_user(db: Database, name: str, role: str) -> str:
    """A dashboard user; returns the generated password."""
    with db.write() as conn:
        password, _token = add_user(conn, name, role, int(time.time() * 1e6))
    return password


def _pack_path() -> Path:
    # proscribe.policies is a data-only namespace package; in an editable install its
    # __path__ also holds a finder hook, so look for the real folder holding the pack.
    import proscribe.policies

    for entry in proscribe.policies.__path__:
        candidate = Path(entry) / f"{POLICY_ID}.toml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{POLICY_ID}.toml is not installed with proscribe.policies")


def sample_policy(serial: int, now: float) -> bytes:
    """The shipped pack with ``serial`` and two exemptions (one active, one expired)."""
    text = _pack_path().read_text("utf-8")
    text = text.replace("serial  = 1", f"serial  = {serial}", 1)
    active = datetime.fromtimestamp(now, UTC) + timedelta(days=20)
    expired = datetime.fromtimestamp(now, UTC) - timedelta(days=6)
    text += f"""
[[exemption]]
id      = "red-team-eval"
rules   = ["deepseek-web"]
hosts   = ["ai-lab-*"]
users   = ["alice"]
expires = {active.strftime("%Y-%m-%dT00:00:00Z")}
reason  = "Red-team evaluation of DeepSeek-R1, ticket SEC-1234"

[[exemption]]
id      = "procurement-review"
rules   = ["deepseek-desktop"]
hosts   = ["ws-0003"]
expires = {expired.strftime("%Y-%m-%dT00:00:00Z")}
reason  = "Vendor security review, ticket PRC-88"
"""
    return text.encode("utf-8")


def store_sample_policies(db: Database, now: float, key: Ed25519PrivateKey | None = None) -> int:
    """Upload serials 1 (two weeks ago) and 2 (three days ago); returns the current serial."""
    key = key or Ed25519PrivateKey.generate()
    with db.write() as conn:
        for serial, age_days in ((1, 14), (2, 3)):
            data = sample_policy(serial, now)
            sig = sign_payload(data, key, None, POLICY_PAYLOAD_TYPE).to_bytes()
            store_policy(
                conn,
                StoredPolicy(
                    serial,
                    POLICY_ID,
                    hashlib.sha256(data).hexdigest(),
                    data,
                    sig,
                    int((now - age_days * DAY) * 1e6),
                    "admin",
                ),
            )
    return 2


@dataclass(frozen=True, slots=True)
class Fleet:
    agent_ids: list[str]
    hostnames: list[str]


def enroll_fleet(db: Database, n_hosts: int, now: float, seed: int = 7) -> Fleet:
    """``n_hosts`` agents with heartbeats: most current, some stale, some on serial 1, a few
    with dropped events and one that never reported."""
    rng = random.Random(seed)
    ids, names = [], []
    with db.write() as conn:
        for i in range(n_hosts):
            name = f"ai-lab-{i:02d}" if i < 2 else f"ws-{i:04d}"
            key = Ed25519PrivateKey.generate().public_key()
            agent_id = enroll_agent(
                conn,
                public_key=public_key_string(key),
                hostname=name,
                os_name="linux" if i % 5 else "macos",
                agent_version="0.1.0",
                secret_id="sample",
                now_us=int((now - 20 * DAY) * 1e6),
            )
            ids.append(agent_id)
            names.append(name)
            if i == n_hosts - 1 and n_hosts > 3:
                continue  # enrolled, never heard from
            stale = i % 11 == 5
            serial = 1 if i % 7 == 3 else 2
            seen = now - (rng.uniform(3 * 3600, 3 * DAY) if stale else rng.uniform(5, 120))
            dropped = rng.randint(1, 40) if i % 13 == 4 else 0
            health = {
                "guard": "fanotify" if i % 4 == 0 else "netlink",
                "drops": {"spool.full": dropped},
                "fail_open": {"timeouts": 0, "overloads": 0},
                "sensors": {
                    "process": {"state": "running", "alive": True},
                    "dns": {"state": "running", "alive": True},
                },
                "policy_rejections": 0,
                "last_policy_rejection": None,
            }
            record_heartbeat(
                conn,
                HeartbeatRecord(
                    agent_id=agent_id,
                    hostname=name,
                    os="linux" if i % 5 else "macos",
                    agent_version="0.1.0",
                    mode="enforce" if i % 9 else "monitor",
                    policy_id=POLICY_ID,
                    policy_serial=serial,
                    policy_sha256=hashlib.sha256(sample_policy(serial, now)).hexdigest(),
                    policy_stale=False,
                    sensors={"process": "running", "dns": "running", "models": "running"},
                    spool_depth=rng.randint(0, 3),
                    spool_bytes=rng.randint(0, 4000),
                    dropped=dropped,
                    agent_time=_iso(seen),
                    machine_id=hashlib.sha256(name.encode()).hexdigest()[:32],
                    health=health,
                    # One host was stopped cleanly (systemctl stop) a minute ago.
                    goodbye_by="SIGTERM from systemd (systemctl stop or shutdown)"
                    if i == 6
                    else None,
                ),
                int(seen * 1e6),
            )
    return Fleet(ids, names)


def make_event(rng: random.Random, t: float, agent_id: str, hostname: str) -> dict[str, Any]:
    roll = rng.random()
    acc = 0.0
    rule, kind = RULES[0][0], RULES[0][1]
    for rule_id, rule_kind, weight in RULES:
        acc += weight
        if roll <= acc:
            rule, kind = rule_id, rule_kind
            break
    # The red team on the lab hosts is mostly alice, whose DNS look-ups are exempted.
    user = "alice" if hostname.startswith("ai-lab-") and rng.random() < 0.6 else rng.choice(USERS)
    blocked = rng.random() < 0.62
    action = (
        {"dns": "sinkholed", "process": "killed", "model": "killed"}[kind]
        if blocked
        else ("reported")
    )
    if rule == "deepseek-web" and hostname.startswith("ai-lab-") and user == "alice":
        action = "exempted"
    body: dict[str, Any] = {
        "id": str(uuid.UUID(int=rng.getrandbits(128))),
        "time": _iso(t),
        "kind": kind,
        "rule": rule,
        "policy": {"id": POLICY_ID, "serial": 2, "sha256": "0" * 64},
        "action": action,
        "severity": "high",
        "host": {"agent_id": agent_id, "hostname": hostname, "os": "linux"},
        "count": 1,
    }
    pid = rng.randint(1000, 60000)
    if kind == "process":
        exe = "/opt/deepseek/DeepSeek" if rule == "deepseek-desktop" else "/usr/local/bin/ollama"
        argv = [exe] if rule == "deepseek-desktop" else [exe, "run", "deepseek-r1:7b"]
        body["process"] = {
            "pid": pid, "ppid": 1, "name": exe.rsplit("/", 1)[1], "exe": exe,
            "cmdline": argv, "user": user,
        }  # fmt: skip
    elif kind == "dns":
        body["dns"] = {"qname": rng.choice(QNAMES), "qtype": "A", "resolver": "127.0.0.53"}
        body["process"] = {"pid": pid, "name": "firefox", "exe": "/usr/lib/firefox/firefox",
                           "cmdline": [], "user": user}  # fmt: skip
    else:
        body["file"] = model_file(rng, user, t)
        if action == "killed":  # a runtime that mapped it, stopped by pid
            body["process"] = {
                "pid": pid, "ppid": 1, "name": "ollama", "exe": "/usr/local/bin/ollama",
                "cmdline": ["/usr/local/bin/ollama", "runner", "--model", body["file"]["path"]],
                "user": user,
            }  # fmt: skip
            body["detail"] = (
                f"rule deepseek-models: model family 'deepseek' matched GGUF general.name = "
                f"{body['file']['model']['name']!r}; pid {pid} has it mapped"
            )
        else:  # the file itself, found by the watch or the sweep
            body["detail"] = (
                f"rule deepseek-models: model family 'deepseek' matched GGUF general.name = "
                f"{body['file']['model']['name']!r} (found by watch)"
            )
    return body


def model_file(rng: random.Random, user: str, t: float) -> dict[str, Any]:
    """A ``file`` section as the model guard writes it."""
    template, fmt, name, arch = rng.choice(MODEL_FILES)
    digest = hashlib.sha256(name.encode()).hexdigest()
    path = template.replace("~", f"/home/{user}", 1).replace("{digest}", digest)
    return {
        "path": path,
        "owner": user,
        "uid": 1000 + USERS.index(user),
        "size": 4_683_073_536,
        "mtime": _iso(t - 3 * DAY)[:19] + "Z",
        "sha256": digest,
        "model": {
            "format": fmt,
            "name": name,
            "evidence": [f"GGUF general.name = {name!r}", f"GGUF general.architecture = {arch!r}"],
            "digests": [f"sha256:{digest}"] if "blobs" in path else [],
        },
    }


def event_row(body: dict[str, Any], received_us: int) -> dict[str, Any]:
    """The stored row for an event body (what the ingest path writes)."""
    return {
        "event_id": body["id"],
        "agent_id": body["host"]["agent_id"],
        "time_us": received_us,
        "received_us": received_us,
        "hostname": body["host"]["hostname"],
        "username": (body.get("process") or {}).get("user")
        or (body.get("file") or {}).get("owner"),
        "rule": body["rule"],
        "kind": body["kind"],
        "action": body["action"],
        "severity": body["severity"],
        "body": json.dumps(body, separators=(",", ":")),
    }


def fill_events(
    db: Database, fleet: Fleet, n_events: int, *, now: float, days: int = 90, seed: int = 11
) -> None:
    """Insert ``n_events`` violations spread over ``days`` (busier recently and on weekdays)
    in time order, 50k rows per transaction through the driver's ``executemany``."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.2) for _ in fleet.agent_ids]
    cumulative = list(itertools.accumulate(weights))
    population = range(len(fleet.agent_ids))
    start = now - days * DAY
    # More events recently, like a ban that is being noticed; weekends are quieter.
    times = sorted(start + days * DAY * (rng.random() ** 0.7) for _ in range(n_events))
    columns = list(_ROW_COLUMNS)
    # Fixed column names; the values are bound as parameters.
    sql = (
        f"INSERT INTO events ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' if db.is_sqlite else '%s' for _ in columns)})"
    )
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        batch: list[tuple[Any, ...]] = []
        for t in times:
            if datetime.fromtimestamp(t, UTC).weekday() >= 5 and rng.random() < 0.6:
                t -= 2 * DAY  # most weekend events happen on the Friday or Thursday before
            i = rng.choices(population, cum_weights=cumulative)[0]
            row = event_row(
                make_event(rng, min(t, now - 1), fleet.agent_ids[i], fleet.hostnames[i]),
                int(t * 1e6),
            )
            batch.append(tuple(row[c] for c in columns))
            if len(batch) >= 50_000:
                cursor.executemany(sql, batch)
                raw.commit()
                batch = []
        if batch:
            cursor.executemany(sql, batch)
        raw.commit()
    finally:
        raw.close()
    with db.write() as conn:  # rows written straight to the table: count them in one pass
        counts.recount(conn)


_ROW_COLUMNS = (
    "event_id", "agent_id", "time_us", "received_us", "hostname", "username", "rule", "kind",
    "action", "severity", "body",
)  # fmt: skip
