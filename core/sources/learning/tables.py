"""Evaluation records: toxicity evaluations and candidate reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, new_id, utcnow


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
