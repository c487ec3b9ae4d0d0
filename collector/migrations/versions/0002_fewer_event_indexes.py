"""Drop the kind/action/severity indexes on events.

They are low-cardinality: a filtered, newest-first page is served as fast by walking
``ix_events_time`` backwards and filtering, and each index cost ~7 µs per stored event.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_DROPPED = (
    ("ix_events_kind_time", "kind"),
    ("ix_events_action_time", "action"),
    ("ix_events_severity_time", "severity"),
)


def upgrade() -> None:
    for name, _column in _DROPPED:
        op.drop_index(name, table_name="events")


def downgrade() -> None:
    for name, column in _DROPPED:
        op.create_index(name, "events", [column, "time_us"])
