"""Engine creation. SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` write transactions so
concurrent writers queue instead of failing; PostgreSQL is used as configured."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import Session, create_engine

SQLITE_BUSY_TIMEOUT_MS = 15_000
READ_ONLY = "espalier_read_only"


def create_db_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """``sqlite_synchronous``: ``FULL`` (the default) syncs the WAL at every commit, so an
    acknowledged write survives power loss; ``NORMAL`` syncs only at checkpoints (it survives a
    process kill, not a power cut) and commits faster (bench/durability.py measures by how much)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"sqlite_synchronous must be FULL or NORMAL (got {sqlite_synchronous!r})")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_pre_ping=True,
        )
        _configure_sqlite(engine, sqlite_synchronous)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # psycopg 3 is the driver we ship; a bare postgresql:// URL would look for psycopg2.
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised by every test
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # IMMEDIATE takes the write lock up front: no deadlock upgrading a read to a write later.
        # Reads (read_connection) begin deferred: with WAL they never wait for a writer.
        connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads on the hot path (every request's key check and model lookup): a
    Core statement built once costs a fraction of an ORM session, and on SQLite the transaction
    begins deferred, so it does not queue behind writers. Never write through it."""
    with engine.connect() as connection:
        connection.execution_options(**{READ_ONLY: True})
        yield connection


def lock_transaction(session: Session, name: str) -> None:
    """Serialise this transaction with every other that takes the same lock, across processes.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or rollback. SQLite: every
    write transaction already begins with ``BEGIN IMMEDIATE`` (see above), which holds the
    database's one write lock until commit, so there is nothing more to take.
    """
    if session.get_bind().dialect.name == "postgresql":
        import zlib

        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(name.encode())})
