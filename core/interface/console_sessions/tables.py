"""Tables of the operator console: sign-in sessions. (Playground rankings are feedback records.)"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class ConsoleSession(SQLModel, table=True):
    """A signed-in console browser. The cookie holds a random token; only its SHA-256 is stored,
    so a database reader cannot ride a session."""

    __tablename__ = "console_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(foreign_key="api_keys.id", index=True, max_length=40, ondelete="CASCADE")
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
