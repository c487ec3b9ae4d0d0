"""Alembic environment: always run by :func:`proscribe.collector.storage.migrate.upgrade`, which
passes an open connection in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from proscribe.collector.storage.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
