"""Reward model versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class RewardModelRecord(SQLModel, table=True):
    """A trained reward model: a versioned artifact with its data snapshot and held-out metrics."""

    __tablename__ = "reward_models"

    id: str = Field(primary_key=True, max_length=40)
    version: int = Field(unique=True)
    status: str = Field(default="candidate", max_length=20)  # current, retired, rejected
    is_current: bool = Field(default=False, index=True)
    base_model: str = Field(default="", sa_type=Text)
    path: str = Field(sa_type=Text)
    data_sha256: str = Field(max_length=64)
    pairs: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    decision: str = Field(default="", sa_type=Text)
    job_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
