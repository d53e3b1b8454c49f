"""Alembic environment: the engine comes from the caller (see ``migrate.py``)."""

from alembic import context
from sqlmodel import SQLModel

# The caller (espalier.core.platform) imports espalier.core.schema, which puts every table on it.

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
