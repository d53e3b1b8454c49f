"""Persistence: sqlmodel tables, the engine (SQLite or PostgreSQL) and alembic migrations."""

from espalier.core.infrastructure.db.engine import create_db_engine, session_scope
from espalier.core.infrastructure.db.migrate import upgrade

__all__ = ["create_db_engine", "session_scope", "upgrade"]
