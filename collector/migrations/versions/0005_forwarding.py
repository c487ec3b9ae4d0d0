"""Forwarding: each [[forward]] destination's cursor, lease and counts, and its dead letters.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "forward_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("cursor_seq", sa.BigInteger, nullable=False),
        sa.Column("sent", sa.BigInteger, nullable=False),
        sa.Column("skipped", sa.BigInteger, nullable=False),
        sa.Column("dead_letters", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger, nullable=False),
        sa.Column("last_sent_us", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.String(1024), nullable=True),
        sa.Column("last_error_us", sa.BigInteger, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "forward_dead_letters",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("forwarder", sa.String(64), nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_forward_dead_letters_forwarder", "forward_dead_letters", ["forwarder", "seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_forward_dead_letters_forwarder", table_name="forward_dead_letters")
    op.drop_table("forward_dead_letters")
    op.drop_table("forward_state")
