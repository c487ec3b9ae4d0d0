"""The collector's schema (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Times are integer microseconds since the epoch (UTC): one type on both databases, index
friendly, and the keyset cursor of the violations API is a plain ``(time_us, seq)`` pair.
Credentials are never stored in a usable form: enroll secrets and API tokens as SHA-256,
passwords as scrypt, agents as their public key only.

The Alembic migrations in ``collector/migrations/versions`` create exactly this schema;
``tests/unit/test_collector_storage.py`` compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; BigInteger elsewhere.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

agents = Table(
    "agents",
    metadata,
    Column("agent_id", String(64), primary_key=True),
    Column("public_key", String(128), nullable=False, index=True),
    Column("hostname", String(4096), nullable=False),
    Column("os", String(64), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("enrolled_us", BigInteger, nullable=False),
    Column("enroll_secret_id", String(32), nullable=True),
    Column("revoked_us", BigInteger, nullable=True),
    # The machine's identity (/etc/machine-id, or a random id the agent keeps in its state
    # directory), what a ban holds on to when a key is thrown away. Migration 0004.
    Column("machine_id", String(64), nullable=True, index=True),
)

enroll_secrets = Table(
    "enroll_secrets",
    metadata,
    Column("secret_id", String(32), primary_key=True),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("label", String(256), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
    # Limits (migration 0004): how many enrollments, until when, which hostnames (a glob).
    Column("max_uses", Integer, nullable=True),
    Column("uses", Integer, nullable=False, server_default="0"),
    Column("expires_us", BigInteger, nullable=True),
    Column("host_pattern", String(256), nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("agent_id", String(64), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("received_us", BigInteger, nullable=False),
    Column("hostname", String(4096), nullable=True),
    Column("username", String(4096), nullable=True),
    Column("rule", String(4096), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("action", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("body", Text, nullable=False),
    # Keyset pagination walks (time_us, seq) downwards; each selective filter column leads
    # its own index so a filtered page is an index range scan. Low-cardinality columns (kind,
    # action, severity) have none: walking the time index and filtering is as fast, and every
    # index costs insert time (migration 0002).
    Index("ix_events_time", "time_us", "seq"),
    Index("ix_events_host_time", "hostname", "time_us"),
    Index("ix_events_user_time", "username", "time_us"),
    Index("ix_events_rule_time", "rule", "time_us"),
    Index("ix_events_agent_time", "agent_id", "time_us"),
)

hosts = Table(
    "hosts",
    metadata,
    Column("agent_id", String(64), primary_key=True),
    Column("hostname", String(4096), nullable=False),
    Column("os", String(64), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("mode", String(16), nullable=True),
    Column("policy_id", String(4096), nullable=True),
    Column("policy_serial", BigInteger, nullable=True),
    Column("policy_sha256", String(64), nullable=True),
    Column("policy_stale", Boolean, nullable=False, default=False),
    Column("max_policy_serial", BigInteger, nullable=True),
    Column("serial_regressed", Boolean, nullable=False, default=False),
    Column("sensors", Text, nullable=False),
    Column("spool_depth", BigInteger, nullable=False, default=0),
    Column("spool_bytes", BigInteger, nullable=False, default=0),
    Column("dropped", BigInteger, nullable=False, default=0),
    Column("first_seen_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False, index=True),
    Column("agent_time", String(64), nullable=True),
    # Migration 0004: the machine identity, the last heartbeat's health section (JSON), and
    # the goodbye of a clean stop (cleared by the next heartbeat).
    Column("machine_id", String(64), nullable=True),
    Column("health", Text, nullable=True),
    Column("goodbye_us", BigInteger, nullable=True),
    Column("goodbye_by", String(256), nullable=True),
)

# What changed in a host's heartbeats, one row per heartbeat that changed something (never
# one per heartbeat: 10k agents a minute would be 14M rows a day). kind: "first" (the first
# heartbeat), "changed" (policy, mode, version, sensors, drops…), "resumed" (after a silence
# longer than the heartbeat window). detail is JSON. Migration 0003.
host_history = Table(
    "host_history",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("agent_id", String(64), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_host_history_agent_time", "agent_id", "time_us"),
)

# A revoked agent's machine may not enroll again (under any key) until an admin lifts the ban.
# Migration 0004.
bans = Table(
    "bans",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("machine_id", String(64), nullable=False, index=True),
    Column("agent_id", String(64), nullable=True),
    Column("reason", String(1024), nullable=False),
    Column("banned_us", BigInteger, nullable=False),
    Column("banned_by", String(256), nullable=False),
    Column("lifted_us", BigInteger, nullable=True),
    Column("lifted_by", String(256), nullable=True),
)

# The hosts that must be covered (imported CSV). Matched to agents by machine identity when the
# row gives one, else by hostname. Migration 0004.
inventory = Table(
    "inventory",
    metadata,
    Column("hostname", String(255), primary_key=True),
    Column("asset_id", String(256), nullable=False),
    Column("owner", String(256), nullable=False),
    Column("group_name", String(256), nullable=False),
    Column("machine_id", String(64), nullable=True, index=True),
    Column("imported_us", BigInteger, nullable=False),
    Column("imported_by", String(256), nullable=False),
)

# Signing keys by name: who a key id in a policy's signature is. Migration 0004.
signers = Table(
    "signers",
    metadata,
    Column("keyid", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("role", String(256), nullable=False),
    Column("added_by", String(256), nullable=False),
    Column("added_us", BigInteger, nullable=False),
    Column("retired_us", BigInteger, nullable=True),
)

policies = Table(
    "policies",
    metadata,
    Column("serial", BigInteger, primary_key=True, autoincrement=False),
    Column("policy_id", String(4096), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("policy", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("uploaded_us", BigInteger, nullable=False),
    Column("uploaded_by", String(256), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("user_id", SeqType, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("password_hash", String(512), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("disabled_us", BigInteger, nullable=True),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("user_id", BigInteger, nullable=False, index=True),
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
)

nonces = Table(
    "nonces",
    metadata,
    # The primary key is the replay check: a second insert of the same nonce fails on every
    # replica, because the cache lives in the shared database, not in a process.
    Column("nonce", String(32), primary_key=True),
    Column("agent_id", String(64), nullable=False),
    Column("expires_us", BigInteger, nullable=False, index=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("time_us", BigInteger, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(4096), nullable=False),
    Column("detail", Text, nullable=False),
    # Unique: two writers that read the same head cannot both append after it (the chain
    # never forks); the loser retries on the new head.
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
)

# One row per [[forward]] destination: its cursor (every event with seq <= cursor_seq was
# sent, skipped by min_severity, or dead-lettered), its counts, its last error and the lease
# that lets one replica at a time forward it. Migration 0006.
forward_state = Table(
    "forward_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("cursor_seq", BigInteger, nullable=False),
    Column("sent", BigInteger, nullable=False, default=0),
    Column("skipped", BigInteger, nullable=False, default=0),
    Column("dead_letters", BigInteger, nullable=False, default=0),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_until_us", BigInteger, nullable=False, default=0),
    Column("last_sent_us", BigInteger, nullable=True),
    Column("last_error", String(1024), nullable=True),
    Column("last_error_us", BigInteger, nullable=True),
    Column("created_us", BigInteger, nullable=False),
)

# The events a forwarder could not render or its destination refused for good, skipped so
# they never block the others (migration 0006).
forward_dead_letters = Table(
    "forward_dead_letters",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("forwarder", String(64), nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("reason", String(1024), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Index("ix_forward_dead_letters_forwarder", "forwarder", "seq"),
)

# Token buckets every replica shares: enrollment per address and global, failed sign-ins per
# address and per user name (collector/storage/buckets.py). Migration 0007.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("stamp_us", BigInteger, nullable=False, index=True),
)

# Violations counted at ingest, in the same transaction as the events (see storage/counts.py):
# what the overview and the report's totals and top hosts group by, per UTC day. Text parts of
# the key are cut to KEY_CHARS characters ("" for none) so a key stays well under PostgreSQL's
# btree entry limit.
violation_counts = Table(
    "violation_counts",
    metadata,
    Column("day", Integer, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("action", String(16), primary_key=True),
    Column("severity", String(16), primary_key=True),
    Column("rule", String(128), primary_key=True),
    Column("hostname", String(128), primary_key=True),
    Column("username", String(128), primary_key=True),
    Column("agent_id", String(64), primary_key=True),  # the authenticated agent (0008)
    Column("n", BigInteger, nullable=False),
)

# The same violations summed over blocks of BLOCK_DAYS UTC days (day // BLOCK_DAYS) by kind,
# action, rule and agent, kept in the same transaction (storage/counts.py): a long report
# reads its whole blocks here and only the days at its ends from violation_counts (0009).
violation_blocks = Table(
    "violation_blocks",
    metadata,
    Column("block", Integer, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("action", String(16), primary_key=True),
    Column("rule", String(128), primary_key=True),
    Column("agent_id", String(64), primary_key=True),
    Column("n", BigInteger, nullable=False),
)
