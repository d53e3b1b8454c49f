"""Chain sessions and their turns."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class ChainSession(SQLModel, table=True):
    """One conversation with a named chain: its memory lives here and in its turns."""

    __tablename__ = "chain_sessions"

    id: str = Field(primary_key=True, max_length=40)
    chain: str = Field(max_length=64, index=True)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    summary: str = Field(default="", sa_type=Text)  # summary memory: the running summary
    turns: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ChainTurn(SQLModel, table=True):
    __tablename__ = "chain_turns"
    __table_args__ = (UniqueConstraint("session_id", "number", name="uq_chain_turns_session_number"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="chain_sessions.id", max_length=40, index=True)
    number: int
    input: str = Field(sa_type=Text)
    output: str = Field(default="", sa_type=Text)
    agent_run_id: str | None = Field(default=None, max_length=40)  # when the chain used tools
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
