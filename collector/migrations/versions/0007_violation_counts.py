"""Violation counts kept at ingest (storage/counts.py), filled from the events already stored.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DAY_US = 86_400 * 1_000_000
KEY_CHARS = 128  # storage/counts.py KEY_CHARS
KINDS = "('process', 'dns', 'file', 'model', 'tamper')"  # storage/counts.py VIOLATION_KINDS


def upgrade() -> None:
    op.create_table(
        "violation_counts",
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("severity", sa.String(16), primary_key=True),
        sa.Column("rule", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(128), primary_key=True),
        sa.Column("username", sa.String(128), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    # One grouped pass over the events (the same key as storage/counts.key_of). Written for
    # both databases: substr and coalesce are spelled the same; the day is an integer division.
    backfill = (
        "INSERT INTO violation_counts"  # noqa: S608 - constants only, no input
        "  (day, kind, action, severity, rule, hostname, username, n) "
        f"SELECT CAST(time_us / {DAY_US} AS INTEGER) AS d, kind, action, severity, "
        f"substr(coalesce(rule, ''), 1, {KEY_CHARS}) AS r, "
        f"substr(coalesce(hostname, ''), 1, {KEY_CHARS}) AS h, "
        f"substr(coalesce(username, ''), 1, {KEY_CHARS}) AS u, count(*) "
        f"FROM events WHERE kind IN {KINDS} "
        "GROUP BY d, kind, action, severity, r, h, u"
    )
    op.execute(backfill)


def downgrade() -> None:
    op.drop_table("violation_counts")
