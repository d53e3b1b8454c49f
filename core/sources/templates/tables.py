"""Prompt templates, versioned by name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from espalier.core.infrastructure.db.base import UTCDateTime, utcnow


class PromptTemplate(SQLModel, table=True):
    """A named, versioned prompt: optional system text, worked examples, and a user template."""

    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_prompt_templates_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, index=True)
    version: int = 1
    description: str = Field(default="", sa_type=Text)
    system: str | None = Field(default=None, sa_type=Text)
    examples: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    user: str = Field(default="{{ input }}", sa_type=Text)
    variables: list[str] = Field(default_factory=list, sa_type=JSON)
    created_by: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
