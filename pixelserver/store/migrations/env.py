"""Alembic environment: always run with a connection handed in by pixelserver.migrate.

MailPing's engines are async; the migration functions run on the sync side of an async
connection (`AsyncConnection.run_sync`), so no second, synchronous driver is needed.
"""

from alembic import context

from pixelserver.store import webhookschema  # noqa: F401 - its tables join Base.metadata
from pixelserver.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `mailping db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
