"""Alembic's environment for the results store: always given an open connection by
:func:`edgepipe.lab.store.open_store` (no alembic.ini, no logging set-up of its own)."""

from alembic import context

from edgepipe.lab.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=True)  # SQLite alters tables by copying them
with context.begin_transaction():
    context.run_migrations()
