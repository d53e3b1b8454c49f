"""Feedback, imported preference pairs and reward model versions.

Feedback rows are append-only: a later submission by the same key on the same item supersedes
an earlier one when pairs are derived, but nothing is updated or deleted in place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class FeedbackRecord(SQLModel, table=True):
    """One submission: on a completion (thumbs, score, comment, correction) or a ranking of a request."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("key_id", "idempotency_key", name="uq_feedback_key_idempotency"),)

    id: str = Field(primary_key=True, max_length=40)
    kind: str = Field(max_length=20, index=True)  # "completion" or "ranking"
    request_id: str = Field(foreign_key="chat_requests.id", index=True, max_length=60)
    completion_id: str | None = Field(default=None, foreign_key="completions.id", index=True, max_length=60)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # Provenance: who gave it, and what produced the judged text.
    key_id: str = Field(max_length=40, index=True)
    key_name: str = Field(default="", max_length=200)
    key_role: str = Field(default="user", max_length=20)
    model: str = Field(default="", max_length=100)
    model_version: str | None = Field(default=None, max_length=40)
    sampling: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    sources: list[Any] | None = Field(default=None, sa_type=JSON)
    tool_traces: list[Any] | None = Field(default=None, sa_type=JSON)
    idempotency_key: str = Field(max_length=200)
    body_sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class ImportedPair(SQLModel, table=True):
    """A preference pair from an external file (e.g. Anthropic HH), kept apart from our own feedback."""

    __tablename__ = "imported_pairs"

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64, unique=True)  # of (prompt, chosen, rejected): re-imports add nothing
    prompt: str = Field(sa_type=Text)
    chosen: str = Field(sa_type=Text)
    rejected: str = Field(sa_type=Text)
    source: str = Field(default="", max_length=200, index=True)
    imported_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AIPair(SQLModel, table=True):
    """A preference pair labelled by the model itself (constitutional AI: the revision preferred to
    the original), kept apart from human pairs and weighted separately in reward training."""

    __tablename__ = "ai_pairs"

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64, unique=True)
    prompt: str = Field(sa_type=Text)
    chosen: str = Field(sa_type=Text)  # the revision
    rejected: str = Field(sa_type=Text)  # the original completion
    principle: str = Field(default="", max_length=100, index=True)
    critique: str = Field(default="", sa_type=Text)
    model: str = Field(default="", max_length=200)
    constitution: str = Field(default="", max_length=200)
    job_id: str | None = Field(default=None, max_length=40, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
