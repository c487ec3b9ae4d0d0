"""Evidence an auditor can sign (issue 13): machine identities and bans, enroll secret limits,
host health and goodbye, the inventory of hosts in scope, the registry of signing keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("machine_id", sa.String(64), nullable=True))
        batch.create_index("ix_agents_machine_id", ["machine_id"])
    with op.batch_alter_table("enroll_secrets") as batch:
        batch.add_column(sa.Column("max_uses", sa.Integer, nullable=True))
        batch.add_column(sa.Column("uses", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("expires_us", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("host_pattern", sa.String(256), nullable=True))
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("machine_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("health", sa.Text, nullable=True))
        batch.add_column(sa.Column("goodbye_us", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("goodbye_by", sa.String(256), nullable=True))
    op.create_table(
        "bans",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("machine_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("banned_us", sa.BigInteger, nullable=False),
        sa.Column("banned_by", sa.String(256), nullable=False),
        sa.Column("lifted_us", sa.BigInteger, nullable=True),
        sa.Column("lifted_by", sa.String(256), nullable=True),
    )
    op.create_index("ix_bans_machine_id", "bans", ["machine_id"])
    op.create_table(
        "inventory",
        sa.Column("hostname", sa.String(255), primary_key=True),
        sa.Column("asset_id", sa.String(256), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("group_name", sa.String(256), nullable=False),
        sa.Column("machine_id", sa.String(64), nullable=True),
        sa.Column("imported_us", sa.BigInteger, nullable=False),
        sa.Column("imported_by", sa.String(256), nullable=False),
    )
    op.create_index("ix_inventory_machine_id", "inventory", ["machine_id"])
    op.create_table(
        "signers",
        sa.Column("keyid", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("role", sa.String(256), nullable=False),
        sa.Column("added_by", sa.String(256), nullable=False),
        sa.Column("added_us", sa.BigInteger, nullable=False),
        sa.Column("retired_us", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("signers")
    op.drop_index("ix_inventory_machine_id", table_name="inventory")
    op.drop_table("inventory")
    op.drop_index("ix_bans_machine_id", table_name="bans")
    op.drop_table("bans")
    with op.batch_alter_table("hosts") as batch:
        for name in ("goodbye_by", "goodbye_us", "health", "machine_id"):
            batch.drop_column(name)
    with op.batch_alter_table("enroll_secrets") as batch:
        for name in ("host_pattern", "expires_us", "uses", "max_uses"):
            batch.drop_column(name)
    with op.batch_alter_table("agents") as batch:
        batch.drop_index("ix_agents_machine_id")
        batch.drop_column("machine_id")
