"""Token buckets in the database: enrollment and sign-in throttles shared by replicas.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("stamp_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rate_buckets_stamp_us", "rate_buckets", ["stamp_us"])


def downgrade() -> None:
    op.drop_index("ix_rate_buckets_stamp_us", table_name="rate_buckets")
    op.drop_table("rate_buckets")
