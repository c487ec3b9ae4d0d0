"""The v1 schema: agents, enroll secrets, events, hosts, policies, users, tokens, nonces, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("public_key", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(4096), nullable=False),
        sa.Column("os", sa.String(64), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("enrolled_us", sa.BigInteger, nullable=False),
        sa.Column("enroll_secret_id", sa.String(32), nullable=True),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_agents_public_key", "agents", ["public_key"])
    op.create_table(
        "enroll_secrets",
        sa.Column("secret_id", sa.String(32), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "events",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("hostname", sa.String(4096), nullable=True),
        sa.Column("username", sa.String(4096), nullable=True),
        sa.Column("rule", sa.String(4096), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    for name, cols in (
        ("ix_events_time", ["time_us", "seq"]),
        ("ix_events_host_time", ["hostname", "time_us"]),
        ("ix_events_user_time", ["username", "time_us"]),
        ("ix_events_rule_time", ["rule", "time_us"]),
        ("ix_events_kind_time", ["kind", "time_us"]),
        ("ix_events_action_time", ["action", "time_us"]),
        ("ix_events_severity_time", ["severity", "time_us"]),
        ("ix_events_agent_time", ["agent_id", "time_us"]),
    ):
        op.create_index(name, "events", cols)
    op.create_table(
        "hosts",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("hostname", sa.String(4096), nullable=False),
        sa.Column("os", sa.String(64), nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=True),
        sa.Column("policy_id", sa.String(4096), nullable=True),
        sa.Column("policy_serial", sa.BigInteger, nullable=True),
        sa.Column("policy_sha256", sa.String(64), nullable=True),
        sa.Column("policy_stale", sa.Boolean, nullable=False),
        sa.Column("max_policy_serial", sa.BigInteger, nullable=True),
        sa.Column("serial_regressed", sa.Boolean, nullable=False),
        sa.Column("sensors", sa.Text, nullable=False),
        sa.Column("spool_depth", sa.BigInteger, nullable=False),
        sa.Column("spool_bytes", sa.BigInteger, nullable=False),
        sa.Column("dropped", sa.BigInteger, nullable=False),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
        sa.Column("last_seen_us", sa.BigInteger, nullable=False),
        sa.Column("agent_time", sa.String(64), nullable=True),
    )
    op.create_index("ix_hosts_last_seen_us", "hosts", ["last_seen_us"])
    op.create_table(
        "policies",
        sa.Column("serial", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("policy_id", sa.String(4096), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("policy", sa.LargeBinary, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("uploaded_us", sa.BigInteger, nullable=False),
        sa.Column("uploaded_by", sa.String(256), nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("user_id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(512), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("disabled_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "api_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "nonces",
        sa.Column("nonce", sa.String(32), primary_key=True),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_nonces_expires_us", "nonces", ["expires_us"])
    op.create_table(
        "audit_log",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(4096), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for name in (
        "audit_log",
        "nonces",
        "api_tokens",
        "users",
        "policies",
        "hosts",
        "events",
        "enroll_secrets",
        "agents",
    ):
        op.drop_table(name)
