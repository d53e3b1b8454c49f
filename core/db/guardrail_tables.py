"""Guardrail decisions and evaluation records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text
from sqlmodel import Field, SQLModel

from .tables import UTCDateTime, new_id, utcnow


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


class EvaluationRecord(SQLModel, table=True):
    """An evaluation run (e.g. toxicity of several models on one prompt set), kept to compare later."""

    __tablename__ = "evaluations"

    id: str = Field(default_factory=lambda: new_id("eval"), primary_key=True, max_length=40)
    kind: str = Field(max_length=40, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    models: list[str] = Field(default_factory=list, sa_type=JSON)
    settings: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    results: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    artifacts: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    # A policy evaluation judges one candidate version of one model against the serving one;
    # promotion reads its gate. Empty for other kinds.
    subject: str | None = Field(default=None, max_length=100, index=True)
    candidate: str | None = Field(default=None, max_length=40)  # the candidate's version id
    passed: bool | None = None
