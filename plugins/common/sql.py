"""Read-only access to an operator's SQL database: the sql tool and the SQL retriever share it.

The boundary is the database itself, not a parser: SQLite is opened with ``mode=ro`` (the engine
refuses every write), PostgreSQL runs each query in a ``READ ONLY`` transaction with a statement
timeout, and every connection is rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine, make_url


def read_only_engine(url: str, *, timeout_ms: int) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise ValueError("the sql tool needs a SQLite file, not an in-memory database")
        # uri=true lets sqlite3 read mode=ro: the file is opened read-only by SQLite itself
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"check_same_thread": False})
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        options = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
        return create_engine(parsed, connect_args={"options": options}, pool_pre_ping=True)
    raise ValueError(f"the sql tool supports SQLite and PostgreSQL URLs, not {backend}")


@contextmanager
def read_only_connection(engine: Engine, timeout_ms: int) -> Iterator[Connection]:
    """A connection whose work is always rolled back: PostgreSQL in a READ ONLY transaction (the
    engine's statement timeout applies), SQLite aborted from its progress handler past the deadline
    (it has no statement timeout). Shared with the SQL retriever."""
    with engine.connect() as connection:
        try:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            else:
                deadline = time.monotonic() + timeout_ms / 1000
                connection.connection.driver_connection.set_progress_handler(
                    lambda: 1 if time.monotonic() > deadline else 0, 10_000
                )
            yield connection
        finally:
            connection.rollback()  # nothing a query did survives it
            if connection.dialect.name == "sqlite":
                connection.connection.driver_connection.set_progress_handler(None, 0)
