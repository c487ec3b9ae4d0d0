"""Heartbeat history: a row per heartbeat that changed something about a host.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "host_history",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_host_history_agent_time", "host_history", ["agent_id", "time_us"])


def downgrade() -> None:
    op.drop_index("ix_host_history_agent_time", table_name="host_history")
    op.drop_table("host_history")
