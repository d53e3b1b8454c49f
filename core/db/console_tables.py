"""Tables of the operator console: sign-in sessions, and the rankings operators give candidates
in the playground (kept apart from the feedback store, which may adopt them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from .tables import UTCDateTime, new_id, utcnow


class ConsoleSession(SQLModel, table=True):
    """A signed-in console browser. The cookie holds a random token; only its SHA-256 is stored,
    so a database reader cannot ride a session."""

    __tablename__ = "console_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    key_id: str = Field(foreign_key="api_keys.id", index=True, max_length=40, ondelete="CASCADE")
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class CandidateRanking(SQLModel, table=True):
    """One person's ranking of the candidates of one request: ``ranks`` maps completion id to
    rank (1 is best, ties allowed); ``unacceptable`` lists completion ids flagged as such."""

    __tablename__ = "candidate_rankings"

    id: str = Field(default_factory=lambda: new_id("rnk"), primary_key=True, max_length=40)
    request_id: str = Field(foreign_key="chat_requests.id", index=True, max_length=60, ondelete="CASCADE")
    ranker_key_id: str | None = Field(default=None, max_length=40, index=True)
    ranks: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    unacceptable: list[str] = Field(default_factory=list, sa_type=JSON)
    source: str = Field(default="console", max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
