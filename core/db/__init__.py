"""Persistence: sqlmodel tables, the engine (SQLite or PostgreSQL) and alembic migrations."""

from .engine import create_db_engine, session_scope
from .migrate import upgrade

__all__ = ["create_db_engine", "session_scope", "upgrade"]
