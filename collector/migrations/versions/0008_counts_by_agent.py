"""Violation counts keyed by the authenticated agent too: the report's top hosts by violations
(grouped by agent_id) come from the counts, in the same pass as its totals, instead of a scan
and grouping of every violation of the period. The table is rebuilt from the events with the
new key (storage/counts.py key_of), as migration 0007 filled it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DAY_US = 86_400 * 1_000_000
KEY_CHARS = 128  # storage/counts.py KEY_CHARS
KINDS = "('process', 'dns', 'file', 'model', 'tamper')"  # storage/counts.py VIOLATION_KINDS


def _create(with_agent: bool) -> None:
    columns: list[sa.Column[Any]] = [
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("severity", sa.String(16), primary_key=True),
        sa.Column("rule", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(128), primary_key=True),
        sa.Column("username", sa.String(128), primary_key=True),
    ]
    if with_agent:
        columns.append(sa.Column("agent_id", sa.String(64), primary_key=True))
    op.create_table("violation_counts", *columns, sa.Column("n", sa.BigInteger, nullable=False))
    # One grouped pass over the events (the same key as storage/counts.key_of), for both
    # databases: substr and coalesce are spelled the same; the day is an integer division.
    agent = ", agent_id" if with_agent else ""
    op.execute(
        "INSERT INTO violation_counts"  # noqa: S608 - constants only, no input
        f"  (day, kind, action, severity, rule, hostname, username{agent}, n) "
        f"SELECT CAST(time_us / {DAY_US} AS INTEGER) AS d, kind, action, severity, "
        f"substr(coalesce(rule, ''), 1, {KEY_CHARS}) AS r, "
        f"substr(coalesce(hostname, ''), 1, {KEY_CHARS}) AS h, "
        f"substr(coalesce(username, ''), 1, {KEY_CHARS}) AS u{agent}, count(*) "
        f"FROM events WHERE kind IN {KINDS} "
        f"GROUP BY d, kind, action, severity, r, h, u{agent}"
    )


def upgrade() -> None:
    op.drop_table("violation_counts")
    _create(with_agent=True)


def downgrade() -> None:
    op.drop_table("violation_counts")
    _create(with_agent=False)
