"""Alembic environment: migrations run in one transaction, one migrator at a time."""

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import db.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from api.settings import get_settings
from db.connection import resolve_url, sqlalchemy_url

config = context.config
url = config.attributes.get("url") or sqlalchemy_url(resolve_url(get_settings().neon_database_url))

engine = create_engine(url, poolclass=NullPool)  # nothing stays open, even on failure
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=SQLModel.metadata, transaction_per_migration=False
    )
    with context.begin_transaction():
        # Two instances migrating at once would race; the second waits, then finds nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('todo-api migrate'))"))
        context.run_migrations()
