"""Guardrail decisions and evaluation records."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, new_id, utcnow


class GuardrailEvent(SQLModel, table=True):
    """One policy decision on one text: what scored it, how high, and what was done."""

    __tablename__ = "guardrail_events"

    id: str = Field(default_factory=lambda: new_id("grd"), primary_key=True, max_length=40)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    request_id: str | None = Field(default=None, max_length=80, index=True)
    owner_key_id: str | None = Field(default=None, max_length=40, index=True)
    direction: str = Field(max_length=20)
    route: str = Field(max_length=40)
    policy: str = Field(max_length=80)
    scorer: str = Field(max_length=80)
    scorer_version: str = Field(default="", max_length=300)
    action: str = Field(max_length=20, index=True)  # allow, flag, redact, block
    categories: list[str] = Field(default_factory=list, sa_type=JSON)  # those over their threshold
    scores: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
    # What was judged, kept for operators (review, training data); consumers never read events.
    text: str = Field(default="", sa_type=Text)


class GuardrailFlag(SQLModel, table=True):
    """An operator's label on one text for a guardrail classifier: ``label`` 1 says the text is of
    the category (toxic, an injection), 0 that it is not (a false alarm). The guardrail trainers
    add these to their training data; a later flag of the same text and category replaces it."""

    __tablename__ = "guardrail_flags"
    __table_args__ = (UniqueConstraint("category", "text_sha256", name="uq_guardrail_flags_category_text"),)

    id: str = Field(default_factory=lambda: new_id("flg"), primary_key=True, max_length=40)
    category: str = Field(max_length=40, index=True)  # toxicity, injection
    label: int = 1
    text: str = Field(sa_type=Text)
    text_sha256: str = Field(max_length=64)
    # where the text came from: a stored request's prompt or one of its completions
    request_id: str | None = Field(default=None, max_length=80, index=True)
    completion_id: str | None = Field(default=None, max_length=80)
    flagged_by: str | None = Field(default=None, max_length=40)
    flagged_by_name: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
