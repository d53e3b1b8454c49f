"""Conversations, chat requests and their completions: what feedback is given on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


# Conversations and what was shown ------------------------------------------------------------------
class Conversation(SQLModel, table=True):
    __tablename__ = "conversations"

    id: str = Field(primary_key=True, max_length=80)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ChatRequestRecord(SQLModel, table=True):
    """One API call: the messages sent to the model, how it sampled, what it cost."""

    __tablename__ = "chat_requests"

    id: str = Field(primary_key=True, max_length=60)
    conversation_id: str = Field(foreign_key="conversations.id", index=True, max_length=80)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    kind: str = Field(default="chat", max_length=20)
    model: str = Field(max_length=100, index=True)
    model_version: str | None = Field(default=None, max_length=40)
    messages: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    template: str | None = Field(default=None, max_length=200)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    status: str = Field(default="ok", max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class CompletionRecord(SQLModel, table=True):
    """One candidate shown to the consumer (``n`` > 1 gives several per request)."""

    __tablename__ = "completions"

    id: str = Field(primary_key=True, max_length=60)
    request_id: str = Field(foreign_key="chat_requests.id", index=True, max_length=60, ondelete="CASCADE")
    index: int = 0
    text: str = Field(default="", sa_type=Text)
    finish_reason: str = Field(default="stop", max_length=20)
    completion_tokens: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ResponseRecord(SQLModel, table=True):
    """One ``/v1/responses`` answer, kept so that ``GET /v1/responses/{id}`` and a later request's
    ``previous_response_id`` find it: the conversation as the consumer wrote it (``messages``, the
    earlier turns included), the output items, and the whole response object."""

    __tablename__ = "responses"

    id: str = Field(primary_key=True, max_length=60)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    conversation_id: str = Field(foreign_key="conversations.id", index=True, max_length=80)
    request_id: str | None = Field(default=None, max_length=60)
    previous_response_id: str | None = Field(default=None, max_length=60)
    model: str = Field(max_length=100)
    messages: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    body: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
