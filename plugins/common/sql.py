"""Read-only access to an operator's SQL database: the sql tool and the SQL retriever share it.

The boundary is the database itself, not a parser: SQLite is opened with ``mode=ro`` (the engine
refuses every write), PostgreSQL runs each query in a ``READ ONLY`` transaction with a statement
timeout, and every connection is rolled back.

SQLite also gets an authorizer that admits only reading (SELECT, reads of columns, CTEs) and the
functions in :data:`READ_FUNCTIONS`, so ``zeroblob(900000000)`` (a 0.9 GB allocation per call),
``randomblob``, ``fts3_tokenizer`` (registers a pointer; its one-argument form leaks an address),
``load_extension`` and every PRAGMA but those describing the schema are refused by SQLite itself; and a length limit
(:data:`MAX_VALUE_BYTES`) on any string or blob a query builds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

MAX_VALUE_BYTES = 10_000_000

#: SQLite's core, date, math, JSON, aggregate and window functions that only compute a value.
READ_FUNCTIONS = frozenset(
    """abs avg char coalesce concat concat_ws count cume_dist date datetime dense_rank first_value
    format glob group_concat hex ifnull iif instr julianday lag last_value lead length like likelihood
    likely lower ltrim max min nth_value ntile nullif octet_length percent_rank printf quote random
    rank replace round row_number rtrim sign soundex sqlite_version strftime string_agg substr
    substring sum time timediff total trim typeof unhex unicode unixepoch unlikely upper
    acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2
    mod pi pow power radians sin sinh sqrt tan tanh trunc
    json json_array json_array_length json_extract json_group_array json_group_object json_insert
    json_object json_patch json_quote json_remove json_replace json_set json_type json_valid
    jsonb json_each json_tree median""".split()
)


#: Pragmas that only describe the schema (what reflection and a model exploring tables read).
SCHEMA_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    import sqlite3

    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in READ_FUNCTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in SCHEMA_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _lock_down_sqlite(dbapi_connection: Any, _record: Any) -> None:
    import sqlite3

    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    dbapi_connection.set_authorizer(_sqlite_authorizer)


def read_only_engine(url: str, *, timeout_ms: int) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise ValueError("the sql tool needs a SQLite file, not an in-memory database")
        # uri=true lets sqlite3 read mode=ro: the file is opened read-only by SQLite itself
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _lock_down_sqlite)
        return engine
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
