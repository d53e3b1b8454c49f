"""Registered models, their versions, and the record of what served when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


# Models ----------------------------------------------------------------------------------------
class ModelRecord(SQLModel, table=True):
    """A registered model. Its serving version is one of its :class:`ModelVersion` rows."""

    __tablename__ = "models"

    name: str = Field(primary_key=True, max_length=100)
    provider: str = Field(max_length=100)
    source: str = Field(sa_type=Text)
    dtype: str = Field(default="auto", max_length=20)
    context_window: int | None = None
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    description: str = Field(default="", sa_type=Text)
    serving_version: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ModelVersion(SQLModel, table=True):
    """The base weights (``adapter`` empty) or base plus a LoRA adapter (a trained version)."""

    __tablename__ = "model_versions"

    id: str = Field(primary_key=True, max_length=40)
    model: str = Field(foreign_key="models.name", index=True, max_length=100, ondelete="CASCADE")
    label: str = Field(max_length=100)
    adapter: str | None = Field(default=None, sa_type=Text)
    status: str = Field(default="ready", max_length=20)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ServingChange(SQLModel, table=True):
    """One change of a model's serving version (promotion or rollback). The rows still ``active``
    form a stack: promotion pushes, rollback pops, so repeated rollbacks walk back in order."""

    __tablename__ = "serving_history"

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(foreign_key="models.name", index=True, max_length=100, ondelete="CASCADE")
    version_id: str = Field(max_length=40)
    label: str = Field(max_length=100)
    action: str = Field(max_length=20)  # initial, promote, rollback
    active: bool = True
    evaluation_id: str | None = Field(default=None, max_length=40)
    forced: bool = False
    reason: str = Field(default="", sa_type=Text)
    actor_key_id: str | None = Field(default=None, max_length=40)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
