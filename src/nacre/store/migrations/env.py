"""Alembic environment: always online, on the connection that ``open_store`` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from nacre.store._schema import metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "nacre's migrations run through nacre.store.open_store(), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
